//! TLS settings of the alert transports: takes CA / client certificate / key PEM paths, gives a checked rustls client config (ring provider).

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};

use super::SinkError;

#[derive(Clone, Debug, Default, serde::Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsClientConfig {
    /// PEM bundle of the CAs to trust; absent → the system roots.
    pub ca: Option<PathBuf>,
    /// Client certificate chain (PEM), leaf first.
    pub cert: Option<PathBuf>,
    /// Its key (PKCS#8, RSA or SEC1 PEM).
    pub key: Option<PathBuf>,
    /// Name the server's certificate must carry (and SNI); default: the host the transport connects to.
    pub server_name: Option<String>,
}

fn config_err(path: &Path, what: impl std::fmt::Display) -> SinkError {
    SinkError::Config(format!("tls: {}: {what}", path.display()))
}

/// The file's text, bounded and without blocking on a FIFO (see `crate::input`).
fn read_pem(path: &Path) -> Result<String, SinkError> {
    crate::input::read_text(path, crate::input::MAX_PEM_BYTES, "a PEM file")
        .map_err(|e| SinkError::Config(format!("tls: {e}")))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, SinkError> {
    let pem = read_pem(path)?;
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| config_err(path, e))?;
    if certs.is_empty() {
        return Err(config_err(path, "no PEM certificate in the file"));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, SinkError> {
    PrivateKeyDer::from_pem_slice(read_pem(path)?.as_bytes()).map_err(|e| config_err(path, e))
}

impl TlsClientConfig {
    /// Reads and checks every file now (a bad file is SinkError::Config naming it); ring provider.
    pub fn rustls(&self) -> Result<Arc<rustls::ClientConfig>, SinkError> {
        // Never the process-wide default provider: another crate in the process may install a different one.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        match &self.ca {
            Some(ca) => {
                for cert in read_certs(ca)? {
                    roots.add(cert).map_err(|e| config_err(ca, e))?;
                }
            }
            None => {
                // Unreadable entries among the system certificates are common and harmless; only none at all is fatal.
                let native = rustls_native_certs::load_native_certs();
                let (added, _ignored) = roots.add_parsable_certificates(native.certs);
                if added == 0 {
                    return Err(SinkError::Config(
                        "tls: no system root certificate found (/etc/ssl/certs); set tls.ca".into(),
                    ));
                }
            }
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| SinkError::Config(format!("tls: {e}")))?
            .with_root_certificates(roots);
        let config = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                let chain = read_certs(cert)?;
                let key_der = read_key(key)?;
                builder.with_client_auth_cert(chain, key_der).map_err(|e| {
                    SinkError::Config(format!(
                        "tls: client certificate {} with key {}: {e}",
                        cert.display(),
                        key.display()
                    ))
                })?
            }
            (None, None) => builder.with_no_client_auth(),
            (Some(cert), None) => {
                return Err(config_err(cert, "tls.cert is set without tls.key"));
            }
            (None, Some(key)) => {
                return Err(config_err(key, "tls.key is set without tls.cert"));
            }
        };
        Ok(Arc::new(config))
    }
}

/// Certificates made on the fly for the TLS tests of the alert transports.
#[cfg(test)]
pub(crate) mod testpki {
    use std::path::{Path, PathBuf};

    use rcgen::{
        BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
        KeyPair,
    };

    pub struct Pki {
        ca: Certificate,
        ca_key: KeyPair,
        pub ca_pem: PathBuf,
    }

    /// A leaf certificate and key, as PEM files.
    pub struct Leaf {
        pub cert: PathBuf,
        pub key: PathBuf,
    }

    impl Pki {
        pub fn new(dir: &Path, name: &str) -> Pki {
            let ca_key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params
                .distinguished_name
                .push(DnType::CommonName, format!("{name} test CA"));
            let ca = params.self_signed(&ca_key).unwrap();
            let ca_pem = dir.join(format!("{name}-ca.pem"));
            std::fs::write(&ca_pem, ca.pem()).unwrap();
            Pki { ca, ca_key, ca_pem }
        }

        /// `names` are DNS names or IP addresses; `server` picks the serverAuth or clientAuth usage.
        pub fn leaf(&self, dir: &Path, file: &str, names: &[&str], server: bool) -> Leaf {
            let key = KeyPair::generate().unwrap();
            let mut params =
                CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                    .unwrap();
            params
                .distinguished_name
                .push(DnType::CommonName, names.first().copied().unwrap_or(file));
            params.extended_key_usages = vec![if server {
                ExtendedKeyUsagePurpose::ServerAuth
            } else {
                ExtendedKeyUsagePurpose::ClientAuth
            }];
            let cert = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
            let leaf = Leaf {
                cert: dir.join(format!("{file}.pem")),
                key: dir.join(format!("{file}.key")),
            };
            std::fs::write(&leaf.cert, cert.pem()).unwrap();
            std::fs::write(&leaf.key, key.serialize_pem()).unwrap();
            leaf
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testpki::Pki;
    use super::*;

    fn config_error(cfg: &TlsClientConfig) -> String {
        match cfg.rustls() {
            Err(SinkError::Config(m)) => m,
            Err(e) => panic!("not a Config error: {e:?}"),
            Ok(_) => panic!("accepted {cfg:?}"),
        }
    }

    #[test]
    fn reads_ca_cert_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new(dir.path(), "t");
        let client = pki.leaf(dir.path(), "client", &["client.test"], false);
        let cfg = TlsClientConfig {
            ca: Some(pki.ca_pem.clone()),
            cert: Some(client.cert),
            key: Some(client.key),
            server_name: None,
        };
        let c = cfg.rustls().unwrap();
        assert!(c.client_auth_cert_resolver.has_certs());
        let no_client = TlsClientConfig {
            ca: Some(pki.ca_pem),
            ..Default::default()
        };
        assert!(!no_client
            .rustls()
            .unwrap()
            .client_auth_cert_resolver
            .has_certs());
    }

    #[test]
    fn system_roots_without_ca() {
        // The machines we run on carry ca-certificates; without them `ca` is mandatory and the error says so.
        match TlsClientConfig::default().rustls() {
            Ok(_) => {}
            Err(SinkError::Config(m)) => assert!(m.contains("tls.ca"), "{m}"),
            Err(e) => panic!("{e:?}"),
        }
        if Path::new("/etc/ssl/certs/ca-certificates.crt").exists() {
            TlsClientConfig::default().rustls().unwrap();
        }
    }

    #[test]
    fn every_bad_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new(dir.path(), "t");
        let client = pki.leaf(dir.path(), "client", &["client.test"], false);
        let missing = dir.path().join("absent-ca.pem");
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "this is not PEM\n").unwrap();
        let cut = dir.path().join("cut.pem");
        let pem = std::fs::read_to_string(&pki.ca_pem).unwrap();
        std::fs::write(&cut, &pem[..pem.len() / 2]).unwrap();

        for bad in [&missing, &garbage, &cut] {
            let m = config_error(&TlsClientConfig {
                ca: Some(bad.clone()),
                ..Default::default()
            });
            assert!(m.contains(&bad.display().to_string()), "{m}");
        }
        // A certificate where the key should be, and the other way round.
        let m = config_error(&TlsClientConfig {
            ca: Some(pki.ca_pem.clone()),
            cert: Some(client.cert.clone()),
            key: Some(client.cert.clone()),
            server_name: None,
        });
        assert!(m.contains(&client.cert.display().to_string()), "{m}");
        let m = config_error(&TlsClientConfig {
            ca: Some(pki.ca_pem.clone()),
            cert: Some(client.key.clone()),
            key: Some(client.key.clone()),
            server_name: None,
        });
        assert!(m.contains(&client.key.display().to_string()), "{m}");
        let m = config_error(&TlsClientConfig {
            ca: Some(pki.ca_pem.clone()),
            cert: Some(client.cert.clone()),
            key: Some(missing.clone()),
            server_name: None,
        });
        assert!(m.contains(&missing.display().to_string()), "{m}");
    }

    #[test]
    fn cert_and_key_come_together() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new(dir.path(), "t");
        let client = pki.leaf(dir.path(), "client", &["client.test"], false);
        let m = config_error(&TlsClientConfig {
            ca: Some(pki.ca_pem.clone()),
            cert: Some(client.cert.clone()),
            ..Default::default()
        });
        assert!(m.contains("without tls.key"), "{m}");
        let m = config_error(&TlsClientConfig {
            ca: Some(pki.ca_pem.clone()),
            key: Some(client.key.clone()),
            ..Default::default()
        });
        assert!(m.contains("without tls.cert"), "{m}");
    }

    #[test]
    fn yaml_rejects_unknown_fields() {
        let ok: TlsClientConfig =
            serde_yaml_ng::from_str("ca: /a.pem\nserver_name: siem.example\n").unwrap();
        assert_eq!(ok.ca.as_deref(), Some(Path::new("/a.pem")));
        assert_eq!(ok.server_name.as_deref(), Some("siem.example"));
        assert!(serde_yaml_ng::from_str::<TlsClientConfig>("cafile: /a.pem\n").is_err());
    }
}
