//! MQTT connection options: broker address, keep-alive, session, packet
//! size, credentials (password files, systemd credentials) and TLS (rustls
//! with the ring provider, from PEM files).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::MqttOptions;

use super::error::ServiceError;
use crate::config::{Credentials, TlsFiles};

/// A rustls client configuration from PEM files: the CA to trust, and
/// optionally a client certificate and key (mutual TLS).
pub(super) fn tls_config(files: &TlsFiles) -> Result<rustls::ClientConfig, ServiceError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let _ = rustls::crypto::ring::default_provider().install_default();
    let bad = |what: &str, f: &Path, e: &dyn std::fmt::Display| {
        ServiceError::Config(format!("{what} {}: {e}", f.display()))
    };
    let ca = files.ca_file.as_ref().ok_or_else(|| {
        ServiceError::Config("mqtts:// needs `ca_file` (the CA that signed the broker's certificate)".into())
    })?;
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca).map_err(|e| bad("ca_file", ca, &e))?;
    for cert in certs {
        roots.add(cert.map_err(|e| bad("ca_file", ca, &e))?).map_err(|e| bad("ca_file", ca, &e))?;
    }
    if roots.is_empty() {
        return Err(ServiceError::Config(format!("ca_file {}: no certificate in it", ca.display())));
    }
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    match (&files.cert_file, &files.key_file) {
        (Some(cert), Some(key)) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                .map_err(|e| bad("cert_file", cert, &e))?
                .collect::<Result<_, _>>()
                .map_err(|e| bad("cert_file", cert, &e))?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| bad("key_file", key, &e))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| ServiceError::Config(format!("client certificate: {e}")))
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

/// Where a `password_file` is read: relative to `$CREDENTIALS_DIRECTORY`
/// when systemd passes credentials (`LoadCredential=`), else as written.
pub(super) fn password_path(f: &Path) -> std::path::PathBuf {
    match std::env::var_os("CREDENTIALS_DIRECTORY") {
        Some(dir) if f.is_relative() => Path::new(&dir).join(f),
        _ => f.to_path_buf(),
    }
}

/// TLS to a broker, as the source filter and the uplink make it: the client
/// configuration and the name the broker's certificate must carry.
pub type ClientTls = (Arc<rustls::ClientConfig>, rustls_pki_types::ServerName<'static>);

/// The [`ClientTls`] of a connection to `broker` with `files`.
pub(super) fn client_tls(
    broker: &crate::config::Broker,
    files: &TlsFiles,
) -> Result<ClientTls, ServiceError> {
    let name = rustls_pki_types::ServerName::try_from(broker.host.clone())
        .map_err(|e| ServiceError::Config(format!("url: `{}` is not a TLS server name: {e}", broker.host)))?;
    Ok((Arc::new(tls_config(files)?), name))
}

/// The MQTT options of one connection.
pub(super) fn mqtt_options(
    client_id: &str,
    broker: &crate::config::Broker,
    credentials: &Option<Credentials>,
    tls: Option<&TlsFiles>,
    max_packet: usize,
    clean: bool,
) -> Result<MqttOptions, ServiceError> {
    let mut o = MqttOptions::new(client_id, broker.host.clone(), broker.port);
    if broker.tls {
        let files = tls.ok_or_else(|| {
            ServiceError::Config(format!(
                "{}:{}: mqtts:// needs its TLS settings (ca_file)",
                broker.host, broker.port
            ))
        })?;
        let cfg = tls_config(files)?;
        o.set_transport(rumqttc::Transport::Tls(rumqttc::TlsConfiguration::Rustls(Arc::new(cfg))));
    }
    o.set_keep_alive(Duration::from_secs(30));
    o.set_clean_session(clean);
    o.set_max_packet_size(max_packet, max_packet);
    o.set_inflight(super::delivery::WINDOW as u16);
    if let Some((user, password)) = login(credentials)? {
        o.set_credentials(user, password);
    }
    Ok(o)
}

/// The user name and password to log in with (the password read from its file).
pub(super) fn login(credentials: &Option<Credentials>) -> Result<Option<(String, String)>, ServiceError> {
    let Some(c) = credentials else { return Ok(None) };
    let password = match &c.password_file {
        Some(f) => {
            let f = password_path(f);
            std::fs::read_to_string(&f)
                .map_err(|e| ServiceError::Config(format!("password_file {}: {e}", f.display())))?
                .trim_end_matches(['\n', '\r'])
                .to_string()
        }
        None => String::new(),
    };
    Ok(Some((c.username.clone(), password)))
}
