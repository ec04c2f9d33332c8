from services.cli.main import serve_main

serve_main("notifier")
