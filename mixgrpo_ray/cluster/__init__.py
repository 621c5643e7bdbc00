"""Ray helpers shared by the roles and the driver: spawning and killing actor groups, Ray metrics."""
