/* provider.c - endpoints and credentials per provider kind. */
#include "provider.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const struct provider_api apis[] = {
	[PROVIDER_OPENAI] = { DIALECT_OPENAI, "/v1/chat/completions", "/v1/embeddings" },
	[PROVIDER_OPENAI_COMPAT] = { DIALECT_OPENAI, "/v1/chat/completions", "/v1/embeddings" },
	[PROVIDER_ANTHROPIC] = { DIALECT_ANTHROPIC, "/v1/messages", NULL },
};

const struct provider_api *provider_api(enum provider_kind kind) { return &apis[kind]; }

char *provider_auth_headers(enum provider_kind kind, const char *key, const char *api_version)
{
	size_t n = 64 + (key ? strlen(key) : 0) + (api_version ? strlen(api_version) : 16);
	char *s = malloc(n);
	if (!s)
		return NULL;
	if (kind == PROVIDER_ANTHROPIC)
		snprintf(s, n, "%s%s%santhropic-version: %s\r\n", key ? "x-api-key: " : "",
			 key ? key : "", key ? "\r\n" : "",
			 api_version ? api_version : PROVIDER_ANTHROPIC_VERSION);
	else if (key)
		snprintf(s, n, "Authorization: Bearer %s\r\n", key);
	else
		s[0] = 0;
	return s;
}
