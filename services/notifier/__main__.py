from shared.service import main

from .service import NotifierService

main("notifier", NotifierService)
