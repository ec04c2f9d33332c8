from shared.service import main

from .service import ExecutorService

main("executor", ExecutorService)
