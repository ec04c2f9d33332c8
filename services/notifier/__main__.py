from shared.service.host import main

from .service import NotifierService

main("notifier", NotifierService)
