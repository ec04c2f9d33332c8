from shared.service import main

from .service import ApproverService

main("approver", ApproverService)
