//! meshd PKI: root CA, node certificates, join tokens.
//!
//! Pure functions over PEM text plus the credentials directory: no network.
//!
//! - [`generate_root_ca`] creates the cluster's root CA ([`CaMaterial`]).
//! - [`ca_digest`] and [`JoinToken`] (`SWMTKN-1-<CA digest>-<secret>`): the digest pins the root
//!   certificate a joining node fetches, the secret admits it.
//! - [`NodeKey`] makes a node's key and CSR; a manager signs it with [`sign_node_cert`];
//!   [`parse_node_cert`] reads back the identity, [`verify_signed_by`] checks the issuer.
//! - [`should_renew`] says when a certificate is due; [`NodeCredentials`] stores the result.

mod ca;
mod creds;
mod error;
mod node;
mod pem;
mod renew;
mod token;

pub use ca::{CA_COMMON_NAME, CA_VALIDITY_MS, CaMaterial, generate_root_ca};
pub use creds::{CA_CERT_FILE, NODE_CERT_FILE, NODE_KEY_FILE, NodeCredentials};
pub use error::{PkiError, Result};
pub use mesh_api::NodeRole;
pub use node::{
    MANAGER_OU, NodeIdentity, NodeKey, WORKER_OU, parse_node_cert, parse_node_cert_der,
    role_from_ou, role_ou, sign_node_cert, verify_signed_by,
};
pub use renew::should_renew;
pub use token::{
    DIGEST_LEN, JoinToken, SECRET_LEN, TOKEN_PREFIX, TOKEN_VERSION, ca_digest, digest_der,
};
