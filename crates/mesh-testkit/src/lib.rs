//! meshd lab: N hosts in network namespaces on one machine.
