//! The TLS connector every connection to PostgreSQL is made with (both pools and the
//! relay's LISTEN connection), built once from the URL's `sslmode` and `sslrootcert`
//! with libpq's meaning:
//!
//! - `disable`: tokio-postgres never asks for TLS, so the connector goes unused (one
//!   connector type for every mode keeps the pools' type the same);
//! - `prefer` / `require`: encrypted, the certificate not checked at all, as libpq does
//!   without a root certificate: this stops a passive listener, not an impostor;
//! - `verify-ca`: the chain must lead to one of the CAs, any host name;
//! - `verify-full`: the chain, and the certificate must name the host connected to.
//!
//! The CAs are the `sslrootcert` file, or else the system's trust store (through
//! rustls-native-certs, which redis-rs's TLS support builds already: no second set of
//! roots compiled in, and an operator's `update-ca-certificates` counts). libpq's own
//! default, `~/.postgresql/root.crt`, is not read. The handshake's signatures are
//! always checked, and channel binding (SCRAM-SHA-256-PLUS) is offered by
//! tokio-postgres-rustls.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config::{PgSslMode, PgTls};

/// Why a connector could not be built (the message says what to fix).
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("sslrootcert {path}: {reason}")]
    RootCert { path: String, reason: String },
    #[error("no usable certificate in the system's trust store (install ca-certificates, or name a CA with sslrootcert=PATH)")]
    NoSystemRoots,
    #[error("rustls: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The connector for these settings.
pub fn connector(tls: &PgTls) -> Result<MakeRustlsConnect, TlsSetupError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let config = match tls.mode {
        PgSslMode::Disable | PgSslMode::Prefer | PgSslMode::Require => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate { provider }))
            .with_no_client_auth(),
        PgSslMode::VerifyCa => {
            let inner =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots(tls)?), provider)
                    .build()
                    .map_err(|e| rustls::Error::General(e.to_string()))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyHostName { inner }))
                .with_no_client_auth()
        }
        PgSslMode::VerifyFull => builder
            .with_root_certificates(roots(tls)?)
            .with_no_client_auth(),
    };
    Ok(MakeRustlsConnect::new(config))
}

/// The CAs a verify mode checks against.
fn roots(tls: &PgTls) -> Result<RootCertStore, TlsSetupError> {
    let mut store = RootCertStore::empty();
    match &tls.root_cert {
        Some(ca) => {
            let bad = |reason: String| TlsSetupError::RootCert {
                path: ca.path.display().to_string(),
                reason,
            };
            for cert in CertificateDer::pem_slice_iter(&ca.pem) {
                let cert = cert.map_err(|e| bad(e.to_string()))?;
                store.add(cert).map_err(|e| bad(e.to_string()))?;
            }
        }
        None => {
            // Unreadable files among the system's are skipped: the ones that load count.
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(TlsSetupError::NoSystemRoots);
            }
        }
    }
    Ok(store)
}

/// `prefer` and `require`: any certificate, but the handshake itself must be signed by
/// the key of the certificate presented (so the session is still private to it).
#[derive(Debug)]
struct AnyCertificate {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// `verify-ca`: webpki's whole check, less the host name. Webpki checks the chain
/// (issuer, validity, usage) before the name, so a name mismatch means the chain held.
#[derive(Debug)]
struct AnyHostName {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for AnyHostName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
