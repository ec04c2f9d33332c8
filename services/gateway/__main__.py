from shared.service.host import main

from .service import GatewayService

main("gateway", GatewayService)
