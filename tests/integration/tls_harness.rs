//! What TLS tests share: certificates made at test time by a throwaway CA, so that no key
//! material is committed (a server certificate for `localhost` and `127.0.0.1`, client
//! certificates whose subject is `O=Example, CN=<name>`), the PEM files a server and its
//! clients read, and a server serving TLS in this process.

use std::path::PathBuf;
use std::time::Duration;

use deeprecall::cli::{ClientTls, ServerClient, connect_with, wait_until_serving_with};
use deeprecall::config::Config;
use deeprecall::server::{self, ServerError};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A throwaway certificate authority.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    /// The CA's certificate, PEM.
    pub pem: String,
}

/// A certificate and its key, as PEM.
pub struct Issued {
    /// The certificate, PEM.
    pub cert: String,
    /// Its private key, PEM.
    pub key: String,
}

impl Authority {
    /// A new CA named `name`.
    pub fn new(name: &str) -> Authority {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA certificate");
        Authority {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    fn issue(
        &self,
        names: &[&str],
        subject: &[(DnType, &str)],
        usage: ExtendedKeyUsagePurpose,
    ) -> Issued {
        let names: Vec<String> = names.iter().map(|name| name.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("params");
        params.distinguished_name = DistinguishedName::new();
        for (kind, value) in subject {
            params.distinguished_name.push(kind.clone(), *value);
        }
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("certificate");
        Issued {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    /// A server certificate for `localhost` and `127.0.0.1`.
    pub fn server(&self) -> Issued {
        self.issue(
            &["localhost", "127.0.0.1"],
            &[(DnType::CommonName, "deeprecall test server")],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// A client certificate whose subject is `O=Example, CN=<common_name>`.
    pub fn client(&self, common_name: &str) -> Issued {
        self.issue(
            &[],
            &[
                (DnType::OrganizationName, "Example"),
                (DnType::CommonName, common_name),
            ],
            ExtendedKeyUsagePurpose::ClientAuth,
        )
    }
}

/// PEM files in a directory of their own.
pub struct Files(tempfile::TempDir);

impl Files {
    pub fn new() -> Files {
        Files(tempfile::tempdir().expect("directory"))
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.path().join(name);
        // Replaced whole, as Kubernetes swaps a mounted Secret, so that no reader sees half.
        let staged = self.0.path().join(format!(".{name}.new"));
        std::fs::write(&staged, text).expect("written");
        std::fs::rename(&staged, &path).expect("renamed");
        path
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }

    /// Installs `issued` as the server's certificate and key.
    pub fn serve(&self, issued: &Issued) {
        self.write("server.key", &issued.key);
        self.write("server.crt", &issued.cert);
    }

    /// Client TLS trusting `ca` and presenting `identity` (file names written here).
    pub fn client(&self, ca: &Authority, identity: Option<(&str, &Issued)>) -> ClientTls {
        let ca_path = self.write(&format!("trust-{}.crt", fingerprint(&ca.pem)), &ca.pem);
        let (cert, key) = match identity {
            Some((name, issued)) => (
                Some(self.write(&format!("{name}.crt"), &issued.cert)),
                Some(self.write(&format!("{name}.key"), &issued.key)),
            ),
            None => (None, None),
        };
        ClientTls {
            ca: Some(ca_path),
            cert,
            key,
            server_name: None,
        }
    }
}

/// A short name for a PEM text, to keep the files of different CAs apart.
fn fingerprint(text: &str) -> String {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

/// A server serving TLS, in this process.
pub struct TlsServer {
    /// `https://127.0.0.1:PORT`.
    pub endpoint: String,
    stop: Option<oneshot::Sender<()>>,
    handle: JoinHandle<Result<(), ServerError>>,
    _data: tempfile::TempDir,
}

impl TlsServer {
    /// Starts a server with the TLS files in `files` and waits until it serves, checked over
    /// TLS with `trust`.
    pub async fn start(
        files: &Files,
        trust: &ClientTls,
        configure: impl FnOnce(&mut Config),
    ) -> Self {
        let data = tempfile::tempdir().expect("data directory");
        let mut config = Config::default();
        config.store.data_dir = data.path().to_path_buf();
        config.server.shutdown_grace_seconds = 1.0;
        config.cache.backend = deeprecall::config::CacheBackend::None;
        config.tls.cert = Some(files.path("server.crt"));
        config.tls.key = Some(files.path("server.key"));
        configure(&mut config);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let endpoint = format!("https://{}", listener.local_addr().expect("address"));
        let (stop, stopped) = oneshot::channel::<()>();
        let mut handle = tokio::spawn(server::serve(config, listener, async {
            let _ = stopped.await;
        }));
        tokio::select! {
            ready = wait_until_serving_with(&endpoint, trust, Duration::from_secs(20)) => {
                ready.expect("the server serves over TLS");
            }
            ended = &mut handle => panic!("serve returned before serving: {:?}", ended.expect("no panic")),
        }
        TlsServer {
            endpoint,
            stop: Some(stop),
            handle,
            _data: data,
        }
    }

    pub async fn client(&self, tls: &ClientTls) -> Result<ServerClient, deeprecall::cli::CliError> {
        connect_with(&self.endpoint, None, tls).await
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(20), self.handle)
            .await
            .expect("serve returns")
            .expect("no panic")
            .expect("clean stop");
    }
}
