from shared.service.host import main

from .service import ExecutorService

main("executor", ExecutorService)
