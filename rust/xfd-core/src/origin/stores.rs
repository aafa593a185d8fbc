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
            Arc::new(builder.build().map_err(|e| bad(config, e.to_string()))?)
        }
        "gs" => {
            let builder = GoogleCloudStorageBuilder::from_env()
                .with_bucket_name(bucket)
                .with_retry(retry());
            let builder = apply(config, builder, with_client(GoogleConfigKey::Client), |b, k, v| {
                b.with_config(k, v)
            })?;
            Arc::new(builder.build().map_err(|e| bad(config, e.to_string()))?)
        }
        "az" => {
            let builder = MicrosoftAzureBuilder::from_env()
                .with_container_name(bucket)
                .with_retry(retry());
            let builder = apply(config, builder, with_client(AzureConfigKey::Client), |b, k, v| {
                b.with_config(k, v)
            })?;
            Arc::new(builder.build().map_err(|e| bad(config, e.to_string()))?)
        }
        "http" | "https" => {
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

fn bad(config: &StoreConfig, message: String) -> Error {
    Error::StoreConfig {
        url: config.url.clone(),
        message,
    }
}
