"""Stores: where artifacts come from, in the vocabulary of obstore / the ``object_store`` crate.

A store is a URL plus options. Option names are exactly obstore's (``region``, ``endpoint``,
``allow_http``, ``skip_signature``, ...), so anything obstore documents can be written in a manifest.
String values may reference the environment as ``${VAR}`` or ``${VAR:-default}`` (``$$`` is a literal
``$``): secrets never need to be written into a manifest, and when no credential option is given at all
the provider's standard chain applies (``AWS_*`` variables, instance metadata, ...).

Secret options are never shown: reprs, plans and error messages print ``'***'`` in their place.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from xfd.errors import ConfigError

OptionValue = str | bool | int | float

SCHEMES = ("s3", "gs", "az", "https", "http", "file", "memory")

# obstore's ClientConfig: options of the HTTP client, valid for every remote store.
CLIENT_OPTIONS = frozenset(
    "allow_http allow_invalid_certificates connect_timeout default_content_type http1_only "
    "http2_keep_alive_interval http2_keep_alive_timeout http2_keep_alive_while_idle http2_only "
    "pool_idle_timeout pool_max_idle_per_host proxy_url proxy_ca_certificate proxy_excludes "
    "root_certificate randomize_addresses read_timeout timeout user_agent".split()
)
# obstore's S3Config / GCSConfig / AzureConfig, less the bucket/container (it is in the URL).
STORE_OPTIONS: Mapping[str, frozenset[str]] = {
    "s3": frozenset(
        "access_key_id aws_endpoint_url_s3 checksum_algorithm conditional_put "
        "container_credentials_relative_uri container_credentials_full_uri "
        "container_authorization_token_file copy_if_not_exists default_region disable_tagging "
        "disable_bulk_delete endpoint imdsv1_fallback metadata_endpoint region request_payer role_arn "
        "role_session_name s3_express secret_access_key server_side_encryption session_token "
        "skip_signature sse_bucket_key_enabled sse_customer_key_base64 sse_kms_key_id sts_endpoint "
        "unsigned_payload virtual_hosted_style_request web_identity_token_file".split()
    ),
    "gs": frozenset(
        "service_account service_account_key base_url bearer_token application_credentials skip_signature".split()
    ),
    "az": frozenset(
        "account_name account_key client_id client_secret credential_type tenant_id authority_host sas_key "
        "token use_emulator use_fabric_endpoint encryption_key endpoint msi_endpoint object_id "
        "msi_resource_id federated_token_file use_azure_cli skip_signature disable_tagging fabric_token_service_url "
        "fabric_workload_host fabric_session_token fabric_cluster_identifier".split()
    ),
    "https": frozenset(),
    "http": frozenset(),
    "file": frozenset(),
    "memory": frozenset(),
}
# Values of these options are credentials: never printed anywhere.
SECRET_OPTIONS = frozenset(
    "secret_access_key session_token sse_customer_key_base64 service_account_key bearer_token "
    "account_key client_secret sas_key token encryption_key fabric_session_token".split()
)
REDACTED = "***"

_TEMPLATE = re.compile(r"\$(?:(\$)|\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|(.?))")


def allowed_options(scheme: str) -> frozenset[str]:
    """Every option name valid for a store of ``scheme``."""
    local = scheme in ("file", "memory")
    return STORE_OPTIONS.get(scheme, frozenset()) | (frozenset() if local else CLIENT_OPTIONS)


def scheme_of(url: str) -> str:
    return urlsplit(url).scheme.lower()


def display_options(options: Mapping[str, OptionValue]) -> dict[str, OptionValue]:
    """``options`` with every secret value replaced by ``'***'``, for reprs and messages."""
    return {k: (REDACTED if k in SECRET_OPTIONS else v) for k, v in options.items()}


def public_options(options: Mapping[str, OptionValue]) -> dict[str, OptionValue]:
    """``options`` without the secret ones: what a plan may carry."""
    return {k: v for k, v in options.items() if k not in SECRET_OPTIONS}


def template_problem(value: str) -> str | None:
    """Why ``value`` is not a valid ``${VAR}`` template, or ``None`` when it is."""
    for match in _TEMPLATE.finditer(value):
        if match.group(4) is not None:
            return "a '$' must start ${NAME} or ${NAME:-default} (write $$ for a literal '$')"
    return None


def interpolate(value: str, environ: Mapping[str, str], where: str) -> str:
    """Replaces ``${VAR}`` / ``${VAR:-default}`` in ``value`` from ``environ``.

    ``where`` names the option in error messages; the value itself is never printed, since it may
    already hold part of a secret.
    """

    def substitute(match: re.Match[str]) -> str:
        if match.group(1):
            return "$"
        name, default = match.group(2), match.group(3)
        if name is None:
            raise ConfigError(f"{where}: {template_problem(value)}")
        if name in environ:
            return environ[name]
        if default is not None:
            return default
        raise ConfigError(f"{where}: environment variable {name} is not set; set it or write ${{{name}:-default}}")

    return _TEMPLATE.sub(substitute, value)


def resolve_options(
    options: Mapping[str, OptionValue], environ: Mapping[str, str] | None = None, where: str = "store"
) -> dict[str, OptionValue]:
    """Options with every ``${VAR}`` replaced from ``environ`` (default: this process's environment)."""
    environ = os.environ if environ is None else environ
    return {
        key: interpolate(value, environ, f"{where}.{key}") if isinstance(value, str) else value
        for key, value in options.items()
    }


def build_obstore(
    url: str, options: Mapping[str, OptionValue], environ: Mapping[str, str] | None = None, where: str = "store"
) -> Any:
    """An obstore store for ``url`` with ``options`` resolved from the environment."""
    from obstore.store import from_url

    resolved = resolve_options(options, environ, where)
    client = {k: v for k, v in resolved.items() if k in CLIENT_OPTIONS}
    config = {k: v for k, v in resolved.items() if k not in CLIENT_OPTIONS}
    if scheme_of(url) in ("file", "memory"):
        return from_url(url, **config)
    return from_url(url, config=config, client_options=client or None)
