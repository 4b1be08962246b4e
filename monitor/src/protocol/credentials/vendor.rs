//! Token bytes → the vendor, format and lifetime that a well-known prefix announces.

/// A recognised token format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Format {
    pub vendor: &'static str,
    pub token_type: &'static str,
    /// None when the format's lifetime is set per token (e.g. Vault TTLs).
    pub long_lived: Option<bool>,
}

const fn f(vendor: &'static str, token_type: &'static str, long_lived: Option<bool>) -> Format {
    Format {
        vendor,
        token_type,
        long_lived,
    }
}

const LONG: Option<bool> = Some(true);
const SHORT: Option<bool> = Some(false);
const UNKNOWN: Option<bool> = None;

/// First match wins, so a longer prefix must precede any shorter one it starts with
/// (`sk-ant-` before `sk-`); `prefixes_are_ordered` checks it.
const PREFIXES: &[(&str, Format)] = &[
    // GitHub: https://github.blog/2021-04-05-behind-githubs-new-authentication-token-formats/
    ("github_pat_", f("github", "github_fine_grained_pat", LONG)),
    ("ghp_", f("github", "github_classic_pat", LONG)),
    // OAuth App tokens do not expire unless revoked.
    ("gho_", f("github", "github_oauth_token", LONG)),
    // GitHub App user tokens expire after 8 hours unless the app opted out.
    ("ghu_", f("github", "github_app_user_token", SHORT)),
    // Installation tokens live one hour.
    ("ghs_", f("github", "github_app_installation_token", SHORT)),
    ("ghr_", f("github", "github_refresh_token", LONG)),
    // Slack: rotating tokens (`xoxe.` access, `xoxe-` refresh) come before the plain ones.
    ("xoxe.xox", f("slack", "slack_rotating_token", SHORT)),
    ("xoxe-", f("slack", "slack_refresh_token", LONG)),
    ("xoxb-", f("slack", "slack_bot_token", LONG)),
    ("xoxp-", f("slack", "slack_user_token", LONG)),
    ("xoxa-", f("slack", "slack_workspace_token", UNKNOWN)),
    ("xapp-", f("slack", "slack_app_token", LONG)),
    // Stripe.
    ("sk_live_", f("stripe", "stripe_secret_key", LONG)),
    ("rk_live_", f("stripe", "stripe_restricted_key", LONG)),
    ("sk_test_", f("stripe", "stripe_test_secret_key", LONG)),
    ("rk_test_", f("stripe", "stripe_test_restricted_key", LONG)),
    // Anthropic before every other `sk-`.
    ("sk-ant-oat", f("anthropic", "anthropic_oauth_token", SHORT)),
    ("sk-ant-admin", f("anthropic", "anthropic_admin_key", LONG)),
    ("sk-ant-", f("anthropic", "anthropic_api_key", LONG)),
    ("sk-or-v1-", f("openrouter", "openrouter_api_key", LONG)),
    ("sk-proj-", f("openai", "openai_project_key", LONG)),
    (
        "sk-svcacct-",
        f("openai", "openai_service_account_key", LONG),
    ),
    ("sk-admin-", f("openai", "openai_admin_key", LONG)),
    // Other vendors copied the bare `sk-` shape; OpenAI is still the likeliest.
    ("sk-", f("openai", "openai_api_key", LONG)),
    // Google: API keys are static; `ya29.` OAuth access tokens live one hour.
    ("AIza", f("google", "google_api_key", LONG)),
    ("ya29.", f("google", "google_oauth_access_token", SHORT)),
    // GitLab: https://docs.gitlab.com/ee/security/token_overview.html
    ("glpat-", f("gitlab", "gitlab_pat", LONG)),
    ("gldt-", f("gitlab", "gitlab_deploy_token", LONG)),
    ("glrt-", f("gitlab", "gitlab_runner_token", LONG)),
    ("glptt-", f("gitlab", "gitlab_trigger_token", LONG)),
    // CI job tokens die with the job.
    ("glcbt-", f("gitlab", "gitlab_job_token", SHORT)),
    // HashiCorp Vault: service token TTLs are per policy; batch tokens are short by design.
    ("hvs.", f("hashicorp", "vault_service_token", UNKNOWN)),
    ("hvb.", f("hashicorp", "vault_batch_token", SHORT)),
    ("npm_", f("npm", "npm_access_token", LONG)),
    ("hf_", f("huggingface", "huggingface_token", LONG)),
    ("pypi-", f("pypi", "pypi_api_token", LONG)),
    ("dckr_pat_", f("docker", "docker_hub_pat", LONG)),
    ("xai-", f("xai", "xai_api_key", LONG)),
    ("gsk_", f("groq", "groq_api_key", LONG)),
    ("pplx-", f("perplexity", "perplexity_api_key", LONG)),
    ("r8_", f("replicate", "replicate_api_token", LONG)),
    ("SG.", f("sendgrid", "sendgrid_api_key", LONG)),
    ("xkeysib-", f("brevo", "brevo_api_key", LONG)),
    ("shpat_", f("shopify", "shopify_admin_token", LONG)),
    ("shpca_", f("shopify", "shopify_custom_app_token", LONG)),
    ("shppa_", f("shopify", "shopify_private_app_token", LONG)),
    ("dop_v1_", f("digitalocean", "digitalocean_pat", LONG)),
    (
        "doo_v1_",
        f("digitalocean", "digitalocean_oauth_token", SHORT),
    ),
    ("dp.pt.", f("doppler", "doppler_personal_token", LONG)),
    ("dp.st.", f("doppler", "doppler_service_token", LONG)),
    ("lin_api_", f("linear", "linear_api_key", LONG)),
    ("sntrys_", f("sentry", "sentry_org_token", LONG)),
    ("sntryu_", f("sentry", "sentry_user_token", LONG)),
    ("glsa_", f("grafana", "grafana_service_account_token", LONG)),
    ("glc_", f("grafana", "grafana_cloud_token", LONG)),
    ("figd_", f("figma", "figma_pat", LONG)),
    ("ntn_", f("notion", "notion_integration_token", LONG)),
    ("dapi", f("databricks", "databricks_pat", LONG)),
    ("pscale_tkn_", f("planetscale", "planetscale_token", LONG)),
    ("rubygems_", f("rubygems", "rubygems_api_key", LONG)),
    // OpenStack Keystone Fernet tokens (sent in X-Auth-Token) expire after an hour by default.
    ("gAAAAA", f("openstack", "keystone_fernet_token", SHORT)),
    ("AKIA", f("aws", "aws_access_key", LONG)),
    ("ASIA", f("aws", "aws_temporary_access_key", SHORT)),
];

/// The format a token's prefix announces. A bare prefix is not a token: some
/// bytes must follow it.
pub fn by_prefix(token: &[u8]) -> Option<Format> {
    PREFIXES
        .iter()
        .find(|(p, _)| token.len() > p.len() && token.starts_with(p.as_bytes()))
        .map(|(_, fmt)| *fmt)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_ordered() {
        for (i, (a, _)) in PREFIXES.iter().enumerate() {
            for (b, _) in &PREFIXES[i + 1..] {
                assert!(!b.starts_with(a), "{b} is shadowed by the earlier {a}");
            }
        }
    }

    #[test]
    fn longest_prefix_wins() {
        let t = |s: &str| by_prefix(s.as_bytes()).map(|f| f.token_type);
        assert_eq!(t("sk-ant-api03-xxxx"), Some("anthropic_api_key"));
        assert_eq!(t("sk-proj-xxxx"), Some("openai_project_key"));
        assert_eq!(t("sk-xxxx"), Some("openai_api_key"));
        assert_eq!(t("github_pat_11AAAA"), Some("github_fine_grained_pat"));
        assert_eq!(t("xoxe.xoxp-1-abc"), Some("slack_rotating_token"));
        assert_eq!(t("ghp_"), None);
        assert_eq!(t("plain-opaque-token"), None);
    }
}
