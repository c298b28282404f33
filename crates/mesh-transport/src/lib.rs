//! meshd node-to-node transport: QUIC with mutual TLS, request/response RPC.
