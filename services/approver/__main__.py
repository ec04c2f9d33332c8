from shared.service.host import main

from .service import ApproverService

main("approver", ApproverService)
