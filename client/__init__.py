"""Site side: the ClientApp, site configuration and site CLI."""
