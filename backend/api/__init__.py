"""HTTP plumbing shared by the routers: dependencies and the error handlers."""
