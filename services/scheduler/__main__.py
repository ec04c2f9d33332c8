from shared.service.host import main

from .service import SchedulerService

main("scheduler", SchedulerService)
