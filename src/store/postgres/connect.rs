//! From settings to a connection pool: the URL completed by the password file and the `PG*`
//! variables, session settings sent with the startup message, TLS by `sslmode`, and the
//! mapping of driver and pool errors to [`StoreError`].

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::error::SqlState;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::super::StoreError;
use crate::config::{SslMode, StoreConfig};

/// Builds the pool the settings describe, its sessions searching the HNSW graph with
/// `ef_search`. Connections are opened lazily, so this does not reach the database.
pub(super) fn pool(config: &StoreConfig, ef_search: usize) -> Result<Pool, StoreError> {
    let pg_config = pg_config(config, ef_search)?;
    let tls = tls_connector(config)?;
    let manager = Manager::from_config(
        pg_config,
        tls,
        ManagerConfig {
            // A connection that died idle is found closed on checkout and replaced; one that
            // dies mid-statement fails that statement (UNAVAILABLE) and is dropped.
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let wait = seconds(config.connect_timeout_seconds);
    Pool::builder(manager)
        .max_size(config.pool_size.max(1))
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(wait))
        .create_timeout(Some(wait))
        .recycle_timeout(Some(wait))
        .build()
        .map_err(|error| StoreError::Database(format!("cannot build the connection pool: {error}")))
}

/// Describes the connection: the URL, completed by the password file and the `PG*` variables
/// for what it leaves out, with the session settings every search relies on.
pub(super) fn pg_config(
    config: &StoreConfig,
    ef_search: usize,
) -> Result<tokio_postgres::Config, StoreError> {
    let url = config.database_url.expose().trim();
    let mut pg: tokio_postgres::Config = if url.is_empty() {
        tokio_postgres::Config::new()
    } else {
        // The parser's message may quote the URL, password included: it is not passed on.
        url.parse().map_err(|_| {
            StoreError::Database(
                "store.database_url is not a valid postgres:// URL or key=value string".to_string(),
            )
        })?
    };
    let env = |name: &str| {
        config
            .libpq_env
            .get(name)
            .map(|value| value.expose().to_string())
    };
    if pg.get_hosts().is_empty() {
        pg.host(env("PGHOST").as_deref().unwrap_or("localhost"));
    }
    if pg.get_ports().is_empty()
        && let Some(port) = env("PGPORT")
    {
        let port = port
            .parse()
            .map_err(|_| StoreError::Database(format!("PGPORT {port:?} is not a port")))?;
        pg.port(port);
    }
    if pg.get_user().is_none() {
        pg.user(env("PGUSER").as_deref().unwrap_or("postgres"));
    }
    if pg.get_dbname().is_none()
        && let Some(database) = env("PGDATABASE")
    {
        pg.dbname(database);
    }
    if pg.get_password().is_none() {
        if let Some(file) = &config.database_password_file {
            pg.password(read_password(file)?);
        } else if let Some(password) = env("PGPASSWORD") {
            pg.password(password);
        }
    }
    if pg.get_application_name().is_none() {
        pg.application_name(env("PGAPPNAME").as_deref().unwrap_or("deeprecall"));
    }
    pg.ssl_mode(match config.sslmode {
        SslMode::Disable => tokio_postgres::config::SslMode::Disable,
        SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
            tokio_postgres::config::SslMode::Require
        }
    });
    pg.connect_timeout(seconds(config.connect_timeout_seconds));
    // A peer that vanished (a failover, a cut network) is noticed within about a minute even
    // on an idle pooled connection.
    pg.keepalives(true)
        .keepalives_idle(Duration::from_secs(30))
        .keepalives_interval(Duration::from_secs(10))
        .keepalives_retries(3);
    // Sent with the startup message, so they cost no round trip. `hnsw.iterative_scan` is
    // pgvector 0.8's; 0.7 warns about it on every session and goes on without, unless the
    // setting is `off`, which sends nothing.
    let statement_timeout_ms = (config.statement_timeout_seconds.max(0.0) * 1000.0) as u64;
    // No parallel workers: a search reads a few thousand rows at most, and a parallel plan
    // starts its workers (processes) even for a branch its one-time condition skips, which
    // cost a search at 100,000 documents 5 ms.
    let mut options = format!(
        "-c statement_timeout={statement_timeout_ms} -c hnsw.ef_search={ef_search} \
         -c max_parallel_workers_per_gather=0"
    );
    if let Some(scan) = config.hnsw_iterative_scan.setting() {
        options.push_str(&format!(" -c hnsw.iterative_scan={scan}"));
    }
    pg.options(options);
    Ok(pg)
}

fn read_password(file: &Path) -> Result<String, StoreError> {
    let text = std::fs::read_to_string(file).map_err(|error| {
        StoreError::Database(format!(
            "cannot read store.database_password_file {}: {error}",
            file.display()
        ))
    })?;
    Ok(text.trim_end_matches(['\r', '\n']).to_string())
}

fn seconds(value: f64) -> Duration {
    Duration::try_from_secs_f64(value.max(0.001)).unwrap_or(Duration::from_secs(5))
}

/// Builds the TLS side. As in libpq, `prefer` and `require` encrypt without checking the
/// certificate; `verify-ca` checks that a trusted CA signed it; `verify-full` also checks
/// that it names the host.
fn tls_connector(config: &StoreConfig) -> Result<MakeRustlsConnect, StoreError> {
    Ok(MakeRustlsConnect::new(client_tls(config)?))
}

/// The TLS client of [`tls_connector`], apart from the driver's wrapping.
fn client_tls(config: &StoreConfig) -> Result<rustls::ClientConfig, StoreError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|error| StoreError::Database(format!("TLS setup failed: {error}")))?;
    let client = match config.sslmode {
        SslMode::Disable | SslMode::Prefer | SslMode::Require => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
            .with_no_client_auth(),
        SslMode::VerifyCa | SslMode::VerifyFull => {
            let roots = Arc::new(root_store(config.ssl_ca_file.as_deref())?);
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(|error| StoreError::Database(format!("TLS setup failed: {error}")))?;
            let verifier: Arc<dyn ServerCertVerifier> = if config.sslmode == SslMode::VerifyCa {
                Arc::new(AnyHostName(webpki))
            } else {
                webpki
            };
            builder
                .dangerous()
                .with_custom_certificate_verifier(verifier)
                .with_no_client_auth()
        }
    };
    Ok(client)
}

/// The CA file's certificates, or the system's roots without one.
fn root_store(ca_file: Option<&Path>) -> Result<RootCertStore, StoreError> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(file) => {
            use rustls::pki_types::pem::PemObject;
            let certificates = CertificateDer::pem_file_iter(file).map_err(|error| {
                StoreError::Database(format!(
                    "cannot read store.ssl_ca_file {}: {error}",
                    file.display()
                ))
            })?;
            for certificate in certificates {
                let certificate = certificate.map_err(|error| {
                    StoreError::Database(format!("bad certificate in {}: {error}", file.display()))
                })?;
                roots.add(certificate).map_err(|error| {
                    StoreError::Database(format!("bad certificate in {}: {error}", file.display()))
                })?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            for error in &native.errors {
                tracing::warn!(%error, "a system root certificate could not be loaded");
            }
            roots.add_parsable_certificates(native.certs);
        }
    }
    if roots.is_empty() {
        return Err(StoreError::Database(
            "no CA certificate to verify the database with: set store.ssl_ca_file".to_string(),
        ));
    }
    Ok(roots)
}

/// libpq's `require`: encrypted, whoever answers. Signatures are still checked, so the
/// handshake itself is sound.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
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
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// libpq's `verify-ca`: a trusted chain, whatever host name the certificate gives.
#[derive(Debug)]
struct AnyHostName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyHostName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. },
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
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// PostgreSQL's errors become the store's: a database that cannot be reached, is shutting
/// down, is out of connections or cancelled a statement at its timeout is `Unavailable` (the
/// call may succeed when retried); anything else is a failed statement.
impl From<tokio_postgres::Error> for StoreError {
    fn from(error: tokio_postgres::Error) -> Self {
        if let Some(db) = error.as_db_error() {
            let code = db.code();
            let unavailable = code == &SqlState::QUERY_CANCELED
                || code == &SqlState::ADMIN_SHUTDOWN
                || code == &SqlState::CRASH_SHUTDOWN
                || code == &SqlState::CANNOT_CONNECT_NOW
                || code == &SqlState::TOO_MANY_CONNECTIONS
                || code.code().starts_with("08");
            let message = format!("{} ({})", db.message(), code.code());
            // The database's disk is full: the write was not stored, as with the embedded store.
            let full = code == &SqlState::DISK_FULL;
            return if unavailable {
                StoreError::Unavailable(message)
            } else if full {
                StoreError::Full(message)
            } else {
                StoreError::Database(message)
            };
        }
        let message = error.to_string();
        let io =
            std::error::Error::source(&error).is_some_and(|source| source.is::<std::io::Error>());
        // Closed connections, I/O and TLS failures, connect timeouts; not, say, a parameter
        // that failed to serialise.
        let lost = error.is_closed()
            || io
            || message.starts_with("error connecting")
            || message.starts_with("timeout")
            || message.starts_with("error performing TLS")
            || message.starts_with("error communicating");
        if lost {
            StoreError::Unavailable(message)
        } else {
            StoreError::Database(message)
        }
    }
}

impl From<PoolError> for StoreError {
    fn from(error: PoolError) -> Self {
        match error {
            PoolError::Backend(error) => error.into(),
            PoolError::Timeout(_) => {
                StoreError::Unavailable("no database connection could be had in time".to_string())
            }
            PoolError::Closed => StoreError::Unavailable("the connection pool is closed".into()),
            other => StoreError::Database(other.to_string()),
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::path::Path;

    use rustls::pki_types::PrivateKeyDer;
    use rustls::pki_types::pem::PemObject;
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    fn openssl(dir: &Path, arguments: &[&str]) {
        let output = std::process::Command::new("openssl")
            .args(arguments)
            .current_dir(dir)
            .output()
            .expect("openssl runs");
        assert!(
            output.status.success(),
            "openssl {arguments:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    const EC_KEY: [&str; 5] = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];

    /// Writes `ca.pem`, `signed.pem` (the CA's, for `other.example`) and `stranger.pem`
    /// (self-signed, for `other.example` too), each with its key.
    pub(in crate::store::postgres) fn certificates(dir: &Path) {
        let self_signed = |name: &str, subject: &str| {
            let (key, certificate) = (format!("{name}.key"), format!("{name}.pem"));
            let mut arguments = vec!["req", "-x509", "-days", "2", "-subj", subject];
            arguments.extend(EC_KEY);
            arguments.extend(["-keyout", &key, "-out", &certificate]);
            arguments.extend(["-addext", "subjectAltName=DNS:other.example"]);
            openssl(dir, &arguments);
        };
        self_signed("ca", "/CN=deeprecall test CA");
        self_signed("stranger", "/CN=other.example");
        let mut request = vec!["req", "-subj", "/CN=other.example"];
        request.extend(EC_KEY);
        request.extend(["-keyout", "signed.key", "-out", "signed.csr"]);
        openssl(dir, &request);
        std::fs::write(dir.join("ext.cnf"), "subjectAltName=DNS:other.example\n").unwrap();
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-days",
                "2",
                "-in",
                "signed.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-extfile",
                "ext.cnf",
                "-out",
                "signed.pem",
            ],
        );
    }

    /// Serves one TLS handshake with `name`'s certificate, and makes it as the store would in
    /// `mode`, to a host it calls `host`; returns whether the client accepted the server.
    async fn handshake(dir: &Path, name: &str, mode: SslMode, host: &str) -> bool {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain = CertificateDer::pem_file_iter(dir.join(format!("{name}.pem")))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(dir.join(format!("{name}.key"))).unwrap();
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let serving = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            // The client's verdict is what is checked; the server's side of a refusal is not.
            let _ = acceptor.accept(stream).await;
        });
        let config = StoreConfig {
            sslmode: mode,
            ssl_ca_file: Some(dir.join("ca.pem")),
            ..StoreConfig::default()
        };
        let client = tokio_rustls::TlsConnector::from(Arc::new(client_tls(&config).unwrap()));
        let stream = TcpStream::connect(address).await.unwrap();
        let server_name = ServerName::try_from(host.to_string()).unwrap();
        let accepted = client.connect(server_name, stream).await.is_ok();
        serving.await.unwrap();
        accepted
    }

    #[test]
    fn sessions_start_with_the_statement_timeout_in_milliseconds() {
        let config = StoreConfig {
            database_url: crate::secret::Secret::new("postgres://db.example/deeprecall"),
            statement_timeout_seconds: 2.5,
            ..StoreConfig::default()
        };
        let options = pg_config(&config, 40).unwrap();
        let options = options.get_options().unwrap_or_default();
        assert!(options.contains("-c statement_timeout=2500 "), "{options}");
        assert!(options.contains("-c hnsw.ef_search=40 "), "{options}");
    }

    #[tokio::test]
    async fn each_tls_mode_accepts_the_servers_libpq_accepts() {
        let dir = tempfile::tempdir().unwrap();
        certificates(dir.path());
        let dir = dir.path();
        // require: encrypted, whoever answers.
        assert!(handshake(dir, "stranger", SslMode::Require, "db.example").await);
        // verify-ca: the CA's signature, whatever the name.
        assert!(handshake(dir, "signed", SslMode::VerifyCa, "db.example").await);
        assert!(!handshake(dir, "stranger", SslMode::VerifyCa, "db.example").await);
        // verify-full: the CA's signature and the name.
        assert!(handshake(dir, "signed", SslMode::VerifyFull, "other.example").await);
        assert!(!handshake(dir, "signed", SslMode::VerifyFull, "db.example").await);
        assert!(!handshake(dir, "stranger", SslMode::VerifyFull, "other.example").await);
    }
}
