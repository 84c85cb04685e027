//! Where a model name goes when the config does not say: the OpenAI SDK's
//! environment (`OPENAI_BASE_URL`, `OPENAI_API_KEY`) and LiteLLM-style model
//! prefixes (`claude-…`, `gemini/…`, `ollama/…`), as Python agentd users
//! write them.
//!
//! Pure: the caller passes the environment in, so the config loader decides
//! once, at load, and the result is an ordinary `llm.base_url` /
//! `llm.api_key_env` pair. It never reads a key's value, only whether a
//! variable is set. agentd speaks only the OpenAI wire format: a prefix of a
//! provider that does not is refused with a message that says what to do,
//! rather than sent to OpenAI to come back as a 404.

/// One provider that speaks the OpenAI chat-completions wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Provider {
    /// The model-name prefix that selects it (`gemini/`, or `claude-`).
    pub prefix: &'static str,
    /// Whether the prefix is removed before the name is sent (`gemini/x` → `x`).
    pub strip: bool,
    pub base_url: &'static str,
    /// A variable that overrides `base_url` when set (LiteLLM's name for it).
    pub base_url_env: Option<&'static str>,
    /// The variable holding the key; `None` for local servers without keys.
    pub api_key_env: Option<&'static str>,
}

/// The routing table (README: "Model names and providers"). First match wins.
pub const PROVIDERS: &[Provider] = &[
    Provider {
        prefix: "openai/",
        strip: true,
        base_url: OPENAI,
        base_url_env: Some("OPENAI_BASE_URL"),
        api_key_env: Some("OPENAI_API_KEY"),
    },
    Provider {
        prefix: "anthropic/",
        strip: true,
        base_url: "https://api.anthropic.com/v1",
        base_url_env: Some("ANTHROPIC_API_BASE"),
        api_key_env: Some("ANTHROPIC_API_KEY"),
    },
    Provider {
        prefix: "claude-",
        strip: false,
        base_url: "https://api.anthropic.com/v1",
        base_url_env: Some("ANTHROPIC_API_BASE"),
        api_key_env: Some("ANTHROPIC_API_KEY"),
    },
    Provider {
        prefix: "gemini/",
        strip: true,
        base_url: "https://generativelanguage.googleapis.com/v1beta/openai",
        base_url_env: Some("GEMINI_API_BASE"),
        api_key_env: Some("GEMINI_API_KEY"),
    },
    Provider {
        prefix: "ollama/",
        strip: true,
        base_url: "http://localhost:11434/v1",
        base_url_env: Some("OLLAMA_API_BASE"),
        api_key_env: None,
    },
    Provider {
        prefix: "ollama_chat/",
        strip: true,
        base_url: "http://localhost:11434/v1",
        base_url_env: Some("OLLAMA_API_BASE"),
        api_key_env: None,
    },
    Provider {
        prefix: "deepseek/",
        strip: true,
        base_url: "https://api.deepseek.com/v1",
        base_url_env: Some("DEEPSEEK_API_BASE"),
        api_key_env: Some("DEEPSEEK_API_KEY"),
    },
    Provider {
        prefix: "groq/",
        strip: true,
        base_url: "https://api.groq.com/openai/v1",
        base_url_env: Some("GROQ_API_BASE"),
        api_key_env: Some("GROQ_API_KEY"),
    },
    Provider {
        prefix: "mistral/",
        strip: true,
        base_url: "https://api.mistral.ai/v1",
        base_url_env: Some("MISTRAL_API_BASE"),
        api_key_env: Some("MISTRAL_API_KEY"),
    },
    Provider {
        prefix: "openrouter/",
        strip: true,
        base_url: "https://openrouter.ai/api/v1",
        base_url_env: Some("OPENROUTER_API_BASE"),
        api_key_env: Some("OPENROUTER_API_KEY"),
    },
    Provider {
        prefix: "together_ai/",
        strip: true,
        base_url: "https://api.together.xyz/v1",
        base_url_env: None,
        api_key_env: Some("TOGETHERAI_API_KEY"),
    },
    Provider {
        prefix: "fireworks_ai/",
        strip: true,
        base_url: "https://api.fireworks.ai/inference/v1",
        base_url_env: None,
        api_key_env: Some("FIREWORKS_AI_API_KEY"),
    },
    Provider {
        prefix: "xai/",
        strip: true,
        base_url: "https://api.x.ai/v1",
        base_url_env: None,
        api_key_env: Some("XAI_API_KEY"),
    },
    Provider {
        prefix: "perplexity/",
        strip: true,
        base_url: "https://api.perplexity.ai",
        base_url_env: None,
        api_key_env: Some("PERPLEXITYAI_API_KEY"),
    },
];

/// LiteLLM prefixes of providers whose API is not the OpenAI wire format
/// (or needs more than a base URL and a key, like Azure's deployments).
pub const UNSUPPORTED: &[&str] = &[
    "azure/",
    "azure_ai/",
    "bedrock/",
    "vertex_ai/",
    "vertex_ai_beta/",
    "sagemaker/",
    "cohere/",
    "cohere_chat/",
    "huggingface/",
    "replicate/",
    "watsonx/",
    "cloudflare/",
    "palm/",
    "ai21/",
];

const OPENAI: &str = "https://api.openai.com/v1";

/// Where one model goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub base_url: String,
    pub api_key_env: Option<String>,
    /// The name to send (the prefix removed where the provider wants that).
    pub model: String,
}

/// Routes `model` when the config names no `llm.base_url`. Names without a
/// known prefix go where the OpenAI SDK would send them: `OPENAI_BASE_URL`
/// (or LiteLLM's `OPENAI_API_BASE`), else api.openai.com.
pub fn route(model: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Route, String> {
    let set = |k: &str| env(k).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
    if let Some(prefix) = UNSUPPORTED.iter().find(|p| model.starts_with(**p)) {
        return Err(format!(
            "model {model:?}: the {} provider does not speak the OpenAI chat-completions format, \
             which is all agentd speaks; run a LiteLLM proxy in front of it and set llm.base_url to the proxy",
            prefix.trim_end_matches('/')
        ));
    }
    if let Some(p) = PROVIDERS.iter().find(|p| model.starts_with(p.prefix)) {
        let name = if p.strip { &model[p.prefix.len()..] } else { model };
        if name.is_empty() {
            return Err(format!(
                "model {model:?} names a provider but no model after {:?}",
                p.prefix
            ));
        }
        let base_url = p.base_url_env.and_then(set).unwrap_or_else(|| p.base_url.to_owned());
        return Ok(Route {
            base_url: base_url.trim_end_matches('/').to_owned(),
            api_key_env: p.api_key_env.map(str::to_owned),
            model: name.to_owned(),
        });
    }
    let custom = set("OPENAI_BASE_URL").or_else(|| set("OPENAI_API_BASE"));
    // A local server reached through OPENAI_BASE_URL often needs no key;
    // send none rather than fail when OPENAI_API_KEY is unset.
    let api_key_env = match (&custom, set("OPENAI_API_KEY")) {
        (Some(_), None) => None,
        _ => Some("OPENAI_API_KEY".to_owned()),
    };
    Ok(Route {
        base_url: custom
            .unwrap_or_else(|| OPENAI.to_owned())
            .trim_end_matches('/')
            .to_owned(),
        api_key_env,
        model: model.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
    }

    #[test]
    fn plain_names_follow_the_openai_sdk_environment() {
        let r = route("gpt-4o-mini", &env_of(&[])).unwrap();
        assert_eq!(r.base_url, OPENAI);
        assert_eq!(r.api_key_env.as_deref(), Some("OPENAI_API_KEY"));
        let r = route("gpt-4o-mini", &env_of(&[("OPENAI_BASE_URL", "http://127.0.0.1:9/v1/")])).unwrap();
        assert_eq!(r.base_url, "http://127.0.0.1:9/v1");
        assert_eq!(
            r.api_key_env, None,
            "no key variable set: send none to the custom server"
        );
        let r = route(
            "gpt-4o-mini",
            &env_of(&[("OPENAI_BASE_URL", "http://127.0.0.1:9/v1"), ("OPENAI_API_KEY", "k")]),
        )
        .unwrap();
        assert_eq!(r.api_key_env.as_deref(), Some("OPENAI_API_KEY"));
    }

    #[test]
    fn prefixes_route_to_their_providers() {
        let r = route("gemini/gemini-2.0-flash", &env_of(&[])).unwrap();
        assert_eq!(r.model, "gemini-2.0-flash");
        assert_eq!(r.api_key_env.as_deref(), Some("GEMINI_API_KEY"));
        let r = route(
            "claude-3-5-haiku-latest",
            &env_of(&[("OPENAI_BASE_URL", "http://x/v1")]),
        )
        .unwrap();
        assert_eq!(r.base_url, "https://api.anthropic.com/v1");
        assert_eq!(r.model, "claude-3-5-haiku-latest");
        let r = route(
            "ollama/llama3",
            &env_of(&[("OLLAMA_API_BASE", "http://10.0.0.2:11434/v1")]),
        )
        .unwrap();
        assert_eq!((r.base_url.as_str(), r.api_key_env), ("http://10.0.0.2:11434/v1", None));
        assert_eq!(
            route("deepseek/deepseek-chat", &env_of(&[])).unwrap().model,
            "deepseek-chat"
        );
    }

    #[test]
    fn providers_without_the_openai_format_are_refused_clearly() {
        let e = route("bedrock/anthropic.claude-v2", &env_of(&[])).unwrap_err();
        assert!(e.contains("bedrock") && e.contains("llm.base_url"), "{e}");
        assert!(route("gemini/", &env_of(&[])).is_err());
    }
}
