//! Opening a store from the manifest's URL and options (obstore's option names).
//!
//! Credentials are resolved here, on the node, from the options and the node's own environment
//! (`from_env`): they never travel between peers.

use std::str::FromStr;
use std::sync::Arc;

use object_store::ObjectStore;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::http::HttpBuilder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::prefix::PrefixStore;
use object_store::{ClientConfigKey, RetryConfig};

use crate::error::{Error, Result};

/// A store as the plan names it: URL (with an optional key prefix) and resolved options.
#[derive(Clone, Debug, Default)]
pub struct StoreConfig {
    pub url: String,
    pub options: Vec<(String, String)>,
}

/// Opens the store; keys passed to it later are relative to the URL's prefix.
pub fn open_store(config: &StoreConfig) -> Result<Arc<dyn ObjectStore>> {
    let (scheme, rest) = config
        .url
        .split_once("://")
        .ok_or_else(|| bad(config, "not a URL".into()))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let prefix = prefix.trim_matches('/');
    let store: Arc<dyn ObjectStore> = match scheme {
        "s3" => {
            let builder = AmazonS3Builder::from_env().with_bucket_name(bucket).with_retry(retry());
            let builder = apply(config, builder, with_client(AmazonS3ConfigKey::Client), |b, k, v| {
                b.with_config(k, v)
            })?;
            // `s3_endpoint` (AWS_ENDPOINT_URL_S3) wins over `endpoint` when both are set.
            let endpoint = builder
                .get_config_value(&AmazonS3ConfigKey::S3Endpoint)
                .or_else(|| builder.get_config_value(&AmazonS3ConfigKey::Endpoint));
            let allow_http = builder.get_config_value(&AmazonS3ConfigKey::Client(ClientConfigKey::AllowHttp));
            refuse_plain_http(config, endpoint, allow_http)?;
            Arc::new(builder.build().map_err(|e| bad(config, e.to_string()))?)
        }
        "gs" => {
            let builder = GoogleCloudStorageBuilder::from_env()
                .with_bucket_name(bucket)
                .with_retry(retry());
            let builder = apply(config, builder, with_client(GoogleConfigKey::Client), |b, k, v| {
                b.with_config(k, v)
            })?;
            let allow_http = builder.get_config_value(&GoogleConfigKey::Client(ClientConfigKey::AllowHttp));
            refuse_plain_http(config, builder.get_config_value(&GoogleConfigKey::BaseUrl), allow_http)?;
            Arc::new(builder.build().map_err(|e| bad(config, e.to_string()))?)
        }
        "az" => {
            let builder = MicrosoftAzureBuilder::from_env()
                .with_container_name(bucket)
                .with_retry(retry());
            let builder = apply(config, builder, with_client(AzureConfigKey::Client), |b, k, v| {
                b.with_config(k, v)
            })?;
            // The emulator (Azurite) is reached over HTTP: the builder allows it by itself.
            let emulator = builder.get_config_value(&AzureConfigKey::UseEmulator);
            if !emulator.as_deref().is_some_and(truthy) {
                let allow_http = builder.get_config_value(&AzureConfigKey::Client(ClientConfigKey::AllowHttp));
                refuse_plain_http(config, builder.get_config_value(&AzureConfigKey::Endpoint), allow_http)?;
            }
            Arc::new(builder.build().map_err(|e| bad(config, e.to_string()))?)
        }
        "http" | "https" => {
            let allow_http = config
                .options
                .iter()
                .rfind(|(key, _)| key == "allow_http")
                .map(|(_, value)| value.clone());
            refuse_plain_http(config, Some(config.url.clone()), allow_http)?;
            let builder = HttpBuilder::new().with_url(config.url.as_str()).with_retry(retry());
            let builder = apply(
                config,
                builder,
                |k| ClientConfigKey::from_str(k).ok(),
                |b, k, v| b.with_config(k, v),
            )?;
            return Ok(Arc::new(builder.build().map_err(|e| bad(config, e.to_string()))?));
        }
        "file" => {
            let root = format!("/{}", rest.trim_start_matches('/'));
            return Ok(Arc::new(
                LocalFileSystem::new_with_prefix(root).map_err(|e| bad(config, e.to_string()))?,
            ));
        }
        "memory" => Arc::new(InMemory::new()),
        other => return Err(bad(config, format!("unsupported scheme {other}://"))),
    };
    Ok(if prefix.is_empty() {
        store
    } else {
        Arc::new(PrefixStore::new(store, prefix))
    })
}

/// The retry inside `object_store`'s client (before a body starts). Kept short: the outer
/// [`super::RetryPolicy`] owns the overall budget and the harder backoff on throttling.
fn retry() -> RetryConfig {
    RetryConfig {
        max_retries: 3,
        retry_timeout: std::time::Duration::from_secs(30),
        ..RetryConfig::default()
    }
}

/// Parses an option name as the store's own key, else as an HTTP client key (`allow_http`, ...),
/// which every cloud builder accepts wrapped in its `Client` variant.
fn with_client<K: FromStr>(wrap: fn(ClientConfigKey) -> K) -> impl Fn(&str) -> Option<K> {
    move |key| {
        K::from_str(key)
            .ok()
            .or_else(|| ClientConfigKey::from_str(key).ok().map(wrap))
    }
}

fn apply<B, K>(
    config: &StoreConfig,
    mut builder: B,
    parse: impl Fn(&str) -> Option<K>,
    set: impl Fn(B, K, &str) -> B,
) -> Result<B> {
    for (key, value) in &config.options {
        let parsed = parse(key).ok_or_else(|| bad(config, format!("unknown option {key:?}")))?;
        builder = set(builder, parsed, value);
    }
    Ok(builder)
}

/// `object_store` speaks only HTTPS unless `allow_http` is set: with a plain `http://` endpoint every
/// request would fail with reqwest's bare "HTTP error: builder error". Refused when the store is
/// opened instead, saying what to set.
fn refuse_plain_http(config: &StoreConfig, endpoint: Option<String>, allow_http: Option<String>) -> Result<()> {
    match endpoint {
        Some(endpoint)
            if endpoint.to_ascii_lowercase().starts_with("http://") && !allow_http.as_deref().is_some_and(truthy) =>
        {
            Err(bad(
                config,
                format!(
                    "{endpoint} is plain HTTP, which the store refuses unless allowed; set allow_http = true in \
                     the store's options (or use https://)"
                ),
            ))
        }
        _ => Ok(()),
    }
}

/// A boolean option as `object_store` reads it.
fn truthy(value: &str) -> bool {
    matches!(value.to_ascii_lowercase().as_str(), "1" | "true" | "on" | "yes" | "y")
}

fn bad(config: &StoreConfig, message: String) -> Error {
    Error::StoreConfig {
        url: config.url.clone(),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(url: &str, options: &[(&str, &str)]) -> Result<Arc<dyn ObjectStore>> {
        let options = options.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        open_store(&StoreConfig {
            url: url.into(),
            options,
        })
    }

    #[test]
    fn plain_http_endpoints_need_allow_http_and_the_error_says_so() {
        let advice = "is plain HTTP, which the store refuses unless allowed; set allow_http = true in the \
                      store's options (or use https://)";
        let endpoint = [("endpoint", "http://127.0.0.1:9000"), ("region", "us-east-1")];
        let error = open("s3://bucket/p", &endpoint).err().unwrap().to_string();
        assert_eq!(error, format!("store s3://bucket/p: http://127.0.0.1:9000 {advice}"));
        let error = open("http://127.0.0.1:9000/files", &[]).err().unwrap().to_string();
        assert_eq!(
            error,
            format!("store http://127.0.0.1:9000/files: http://127.0.0.1:9000/files {advice}")
        );
        let error = open("az://c", &[("account_name", "a"), ("endpoint", "HTTP://azure.local")])
            .err()
            .unwrap();
        assert!(error.to_string().contains(advice), "{error}");

        for allowed in ["true", "1", "YES"] {
            let options = [endpoint[0], endpoint[1], ("allow_http", allowed)];
            assert!(open("s3://bucket/p", &options).is_ok(), "allow_http = {allowed}");
            assert!(open("http://127.0.0.1:9000/files", &[("allow_http", allowed)]).is_ok());
        }
        let https = [("endpoint", "https://s3.example.com"), ("region", "us-east-1")];
        assert!(open("s3://bucket/p", &https).is_ok());
        assert!(open("https://example.com/files", &[]).is_ok());
        assert!(open("az://c", &[("account_name", "a"), ("use_emulator", "true")]).is_ok());
    }
}
