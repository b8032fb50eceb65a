"""The test bed: the seed deployment (clients, router, balancers, servers) in network namespaces."""
