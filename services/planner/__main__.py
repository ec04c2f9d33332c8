from shared.service import main

from .service import PlannerService

main("planner", PlannerService)
