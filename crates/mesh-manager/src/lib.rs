//! meshd manager: control API, dispatcher, role manager, CA server.
