//! TLS on the server's own ports: the certificate, its key and the client CAs read from PEM
//! files, swapped in place when the files change or on SIGHUP, so that a rotated certificate
//! reaches new connections while the open ones carry on with the session they have.
//!
//! Every port shares one [`ServerTls`]: its certificate resolver and client verifier hold the
//! material in force behind a lock, and each port's `rustls::ServerConfig` asks them per
//! handshake. A reload that fails (a half-written rotation, a key that does not match) keeps
//! what is in force and is tried again at the next look.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use parking_lot::{Mutex, RwLock};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
};
use sha2::{Digest, Sha256};
use tokio_util::task::AbortOnDropHandle;

use crate::config::{ClientAuth, TlsConfig};
use crate::telemetry::Metrics;

/// ALPN of the gRPC port: HTTP/2, and HTTP/1.1 when gRPC-Web is on.
pub const ALPN_GRPC: &[&[u8]] = &[b"h2"];
/// ALPN of the HTTP ports, which speak both.
pub const ALPN_HTTP: &[&[u8]] = &[b"h2", b"http/1.1"];

/// Errors of reading or applying the TLS files.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file holds no usable PEM, or its contents do not fit together.
    #[error("{}: {reason}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The settings name half of what TLS needs.
    #[error("{0}")]
    Settings(String),
}

/// The files TLS is served from.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsFiles {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// The certificate's private key.
    pub key: PathBuf,
    /// CAs of the client certificates accepted; `None` asks for none.
    pub client_ca: Option<PathBuf>,
    /// Whether a client must present a certificate when `client_ca` is set.
    pub client_auth: ClientAuth,
}

impl TlsFiles {
    /// The files the configuration names; `None` when TLS is off. Half a pair is refused
    /// rather than served in plaintext.
    pub fn from_config(config: &TlsConfig) -> Result<Option<TlsFiles>, TlsError> {
        match (&config.cert, &config.key) {
            (None, None) if config.client_ca.is_some() => Err(TlsError::Settings(
                "tls.client_ca needs tls.cert and tls.key (--tls-cert, --tls-key)".into(),
            )),
            (None, None) => Ok(None),
            (Some(cert), Some(key)) => Ok(Some(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: config.client_ca.clone(),
                client_auth: config.client_auth,
            })),
            (Some(_), None) => Err(TlsError::Settings(
                "tls.cert is set without tls.key (--tls-key)".into(),
            )),
            (None, Some(_)) => Err(TlsError::Settings(
                "tls.key is set without tls.cert (--tls-cert)".into(),
            )),
        }
    }
}

/// What a successful reload did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reloaded {
    /// The files are as they were.
    Unchanged,
    /// New material is in force for new connections.
    Changed,
}

/// The material read from the files, checked to fit together.
struct Material {
    certified: Arc<CertifiedKey>,
    client_verifier: Option<Arc<dyn ClientCertVerifier>>,
    /// Digest of the files' bytes, to tell a change from a re-read of the same files.
    fingerprint: [u8; 32],
    not_after: Option<u64>,
}

/// The TLS material in force for every port, reloadable.
pub struct ServerTls {
    files: TlsFiles,
    provider: Arc<CryptoProvider>,
    certificate: Arc<CurrentCertificate>,
    client_verifier: Option<Arc<CurrentClientVerifier>>,
    state: Mutex<ReloadState>,
}

#[derive(Default)]
struct ReloadState {
    fingerprint: [u8; 32],
    not_after: Option<u64>,
    /// Fingerprint of files that failed to load, so that a broken rotation is reported once,
    /// not at every look.
    failed: Option<[u8; 32]>,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Reads and checks the files; any problem fails here, before anything listens.
    pub fn load(files: TlsFiles) -> Result<Arc<ServerTls>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let material = read_material(&files, &FileBytes::read(&files)?, &provider)?;
        let client_verifier = material.client_verifier.map(|verifier| {
            Arc::new(CurrentClientVerifier {
                mandatory: files.client_auth == ClientAuth::Required,
                current: RwLock::new(verifier),
            })
        });
        Ok(Arc::new(ServerTls {
            certificate: Arc::new(CurrentCertificate(RwLock::new(material.certified))),
            client_verifier,
            state: Mutex::new(ReloadState {
                fingerprint: material.fingerprint,
                not_after: material.not_after,
                failed: None,
            }),
            provider,
            files,
        }))
    }

    /// The files served.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// Whether clients are asked for a certificate.
    pub fn mutual(&self) -> bool {
        self.client_verifier.is_some()
    }

    /// When the certificate in force expires, in seconds since the Unix epoch.
    pub fn not_after(&self) -> Option<u64> {
        self.state.lock().not_after
    }

    /// Re-reads the files and puts them in force if they changed. On an error what is in force
    /// stays; `Ok(Unchanged)` for files that failed before and still hold the same bytes, so
    /// that a broken rotation is reported once.
    pub fn reload(&self) -> Result<Reloaded, TlsError> {
        let bytes = FileBytes::read(&self.files)?;
        let fingerprint = bytes.fingerprint();
        {
            let state = self.state.lock();
            if fingerprint == state.fingerprint || state.failed == Some(fingerprint) {
                return Ok(Reloaded::Unchanged);
            }
        }
        let material = match read_material(&self.files, &bytes, &self.provider) {
            Ok(material) => material,
            Err(error) => {
                self.state.lock().failed = Some(fingerprint);
                return Err(error);
            }
        };
        // Whether a client CA is configured is fixed at start; the files give only its contents.
        if let (Some(current), Some(verifier)) = (&self.client_verifier, material.client_verifier) {
            *current.current.write() = verifier;
        }
        *self.certificate.0.write() = material.certified;
        let mut state = self.state.lock();
        state.fingerprint = material.fingerprint;
        state.not_after = material.not_after;
        state.failed = None;
        Ok(Reloaded::Changed)
    }

    /// A server configuration for one port, with its ALPN protocols; `ask_client` asks for a
    /// client certificate when mutual TLS is configured. TLS 1.2 and 1.3 only.
    pub fn server_config(
        &self,
        alpn: &[&[u8]],
        ask_client: bool,
    ) -> Result<Arc<ServerConfig>, TlsError> {
        let builder = ServerConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|error| TlsError::Settings(format!("TLS versions: {error}")))?;
        let builder = match (&self.client_verifier, ask_client) {
            (Some(verifier), true) => builder
                .with_client_cert_verifier(Arc::clone(verifier) as Arc<dyn ClientCertVerifier>),
            _ => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_cert_resolver(Arc::clone(&self.certificate) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
        Ok(Arc::new(config))
    }
}

/// Re-reads the TLS files every `interval` (when not zero) and on every SIGHUP until the
/// returned handle is dropped.
pub fn watch(tls: Arc<ServerTls>, interval: Duration, metrics: Metrics) -> AbortOnDropHandle<()> {
    #[cfg(unix)]
    let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .inspect_err(|error| {
            tracing::warn!(%error, "cannot listen for SIGHUP: TLS files reload on change only");
        })
        .ok();
    AbortOnDropHandle::new(tokio::spawn(async move {
        let mut ticks = (!interval.is_zero()).then(|| {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks
        });
        loop {
            let tick = async {
                match &mut ticks {
                    Some(ticks) => {
                        ticks.tick().await;
                    }
                    None => std::future::pending().await,
                }
            };
            #[cfg(unix)]
            let hangup = async {
                match &mut hangups {
                    Some(hangups) => hangups.recv().await,
                    None => std::future::pending().await,
                }
            };
            #[cfg(not(unix))]
            let hangup = std::future::pending::<Option<()>>();
            let cause = tokio::select! {
                () = tick => "change",
                received = hangup => match received {
                    Some(()) => "SIGHUP",
                    None => return,
                },
            };
            let reloading = Arc::clone(&tls);
            match tokio::task::spawn_blocking(move || reloading.reload()).await {
                Ok(Ok(Reloaded::Changed)) => {
                    metrics.tls_reload(true);
                    if let Some(not_after) = tls.not_after() {
                        metrics.set_tls_certificate_expiry(not_after);
                    }
                    tracing::info!(
                        cause,
                        not_after = tls.not_after(),
                        "TLS certificate reloaded"
                    );
                }
                Ok(Ok(Reloaded::Unchanged)) => {}
                Ok(Err(error)) => {
                    metrics.tls_reload(false);
                    tracing::error!(
                        cause,
                        %error,
                        "TLS files not reloaded; the certificate in force stays"
                    );
                }
                Err(error) => tracing::error!(%error, "the TLS reload task failed"),
            }
        }
    }))
}

fn read_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// The files' bytes, read once so that the bytes checked are the bytes fingerprinted: a file
/// replaced between two reads would otherwise be recorded as in force without being so.
struct FileBytes {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

impl FileBytes {
    fn read(files: &TlsFiles) -> Result<FileBytes, TlsError> {
        Ok(FileBytes {
            cert: read_file(&files.cert)?,
            key: read_file(&files.key)?,
            client_ca: files.client_ca.as_deref().map(read_file).transpose()?,
        })
    }

    fn fingerprint(&self) -> [u8; 32] {
        let mut digest = Sha256::new();
        for bytes in [Some(&self.cert), Some(&self.key), self.client_ca.as_ref()]
            .into_iter()
            .flatten()
        {
            digest.update((bytes.len() as u64).to_le_bytes());
            digest.update(bytes);
        }
        digest.finalize().into()
    }
}

fn invalid(path: &Path, reason: impl Into<String>) -> TlsError {
    TlsError::Invalid {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn read_certificates(path: &Path, bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certificates = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| invalid(path, format!("not a PEM certificate file: {error}")))?;
    if certificates.is_empty() {
        return Err(invalid(path, "no PEM CERTIFICATE block"));
    }
    Ok(certificates)
}

fn read_material(
    files: &TlsFiles,
    bytes: &FileBytes,
    provider: &CryptoProvider,
) -> Result<Material, TlsError> {
    let chain = read_certificates(&files.cert, &bytes.cert)?;
    let key = PrivateKeyDer::from_pem_slice(&bytes.key).map_err(|error| {
        invalid(
            &files.key,
            format!("no PEM private key (PKCS#8, PKCS#1 or SEC1): {error}"),
        )
    })?;
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|error| invalid(&files.key, format!("unusable private key: {error}")))?;
    let not_after = chain.first().and_then(|leaf| not_after(leaf));
    let certified = CertifiedKey::new(chain, signing_key);
    certified.keys_match().map_err(|error| {
        invalid(
            &files.key,
            format!(
                "the key does not belong to {}: {error}",
                files.cert.display()
            ),
        )
    })?;

    let client_verifier = match (&files.client_ca, &bytes.client_ca) {
        (Some(path), Some(ca_bytes)) => {
            let mut roots = RootCertStore::empty();
            for certificate in read_certificates(path, ca_bytes)? {
                roots
                    .add(certificate)
                    .map_err(|error| invalid(path, format!("not a usable CA: {error}")))?;
            }
            let builder = WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                Arc::new(provider.clone()),
            );
            let builder = match files.client_auth {
                ClientAuth::Required => builder,
                ClientAuth::Optional => builder.allow_unauthenticated(),
            };
            Some(
                builder
                    .build()
                    .map_err(|error| invalid(path, format!("cannot verify clients: {error}")))?,
            )
        }
        _ => None,
    };
    Ok(Material {
        certified: Arc::new(certified),
        client_verifier,
        fingerprint: bytes.fingerprint(),
        not_after,
    })
}

/// The end of a certificate's validity, in seconds since the Unix epoch.
fn not_after(certificate: &CertificateDer<'_>) -> Option<u64> {
    use x509_cert::der::Decode;
    let parsed = x509_cert::Certificate::from_der(certificate.as_ref()).ok()?;
    let end = parsed.tbs_certificate.validity.not_after.to_system_time();
    end.duration_since(UNIX_EPOCH)
        .ok()
        .map(|since| since.as_secs())
}

/// The certificate in force, handed to every handshake.
#[derive(Debug)]
struct CurrentCertificate(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for CurrentCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0.read()))
    }
}

/// The client verifier in force. It sends no CA names in its request: they would be borrowed
/// from a verifier that a reload can replace, and clients with one certificate offer it
/// without them.
#[derive(Debug)]
struct CurrentClientVerifier {
    mandatory: bool,
    current: RwLock<Arc<dyn ClientCertVerifier>>,
}

impl CurrentClientVerifier {
    fn verifier(&self) -> Arc<dyn ClientCertVerifier> {
        Arc::clone(&self.current.read())
    }
}

impl ClientCertVerifier for CurrentClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.verifier()
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.verifier().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.verifier().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.verifier().supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Pair {
        cert: String,
        key: String,
    }

    fn self_signed(name: &str) -> Pair {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        Pair {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    fn install(dir: &Path, pair: &Pair) -> TlsFiles {
        std::fs::write(dir.join("tls.crt"), &pair.cert).unwrap();
        std::fs::write(dir.join("tls.key"), &pair.key).unwrap();
        TlsFiles {
            cert: dir.join("tls.crt"),
            key: dir.join("tls.key"),
            client_ca: None,
            client_auth: ClientAuth::Required,
        }
    }

    fn served(tls: &ServerTls) -> Vec<u8> {
        tls.certificate.0.read().cert[0].as_ref().to_vec()
    }

    #[test]
    fn a_reload_swaps_changed_files_and_reports_broken_ones_once() {
        let dir = tempfile::tempdir().unwrap();
        let files = install(dir.path(), &self_signed("first"));
        let tls = ServerTls::load(files).unwrap();
        let first = served(&tls);
        assert_eq!(tls.reload().unwrap(), Reloaded::Unchanged);

        let second = self_signed("second");
        install(dir.path(), &second);
        assert_eq!(tls.reload().unwrap(), Reloaded::Changed);
        let second_served = served(&tls);
        assert_ne!(second_served, first);

        // A key of another certificate: refused, reported, and then quiet while unchanged.
        std::fs::write(dir.path().join("tls.key"), self_signed("third").key).unwrap();
        let error = tls.reload().unwrap_err();
        assert!(error.to_string().contains("does not belong"), "{error}");
        assert_eq!(tls.reload().unwrap(), Reloaded::Unchanged);
        assert_eq!(served(&tls), second_served);

        // Put right, it is taken.
        std::fs::write(dir.path().join("tls.key"), &second.key).unwrap();
        assert_eq!(tls.reload().unwrap(), Reloaded::Unchanged);
        let fourth = self_signed("fourth");
        install(dir.path(), &fourth);
        assert_eq!(tls.reload().unwrap(), Reloaded::Changed);
        assert_ne!(served(&tls), second_served);
        assert!(tls.not_after().is_some());
    }

    #[test]
    fn half_a_pair_or_a_lone_client_ca_is_refused_with_the_setting_named() {
        let mut config = TlsConfig::default();
        assert_eq!(TlsFiles::from_config(&config).unwrap(), None);
        config.client_ca = Some("ca.pem".into());
        let error = TlsFiles::from_config(&config).unwrap_err().to_string();
        assert!(error.contains("tls.client_ca"), "{error}");
        config.client_ca = None;
        config.cert = Some("tls.crt".into());
        let error = TlsFiles::from_config(&config).unwrap_err().to_string();
        assert!(error.contains("tls.key"), "{error}");
        config.key = Some("tls.key".into());
        assert!(TlsFiles::from_config(&config).unwrap().is_some());
    }
}
