from shared.service import main

from .service import SchedulerService

main("scheduler", SchedulerService)
