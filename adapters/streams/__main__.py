import asyncio

from adapters.streams.command import main

asyncio.run(main())
