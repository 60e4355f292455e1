from adapters.webhooks.command import main

main()
