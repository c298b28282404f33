//! meshd PKI: root CA, node certificates, join tokens.
