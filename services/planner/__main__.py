from shared.service.host import main

from .service import PlannerService

main("planner", PlannerService)
