from shared.service import main

from .service import GatewayService

main("gateway", GatewayService)
