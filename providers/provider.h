/* provider.h - what differs between provider kinds when the gateway calls them: the
 * dialect they speak, where their endpoints are, and how the gateway authenticates.
 * The bodies themselves are translate.h's business. */
#ifndef PENSTOCK_PROVIDER_H
#define PENSTOCK_PROVIDER_H

#include "core/config.h"
#include "providers/translate.h"

struct provider_api {
	enum dialect dialect;
	const char *chat_path;       /* appended to the base_url's path prefix */
	const char *embeddings_path; /* NULL: the provider has no embeddings endpoint */
};

const struct provider_api *provider_api(enum provider_kind kind);

/* The header lines ("Name: value\r\n" each) that authenticate the gateway to a provider
 * of this kind: Authorization: Bearer for OpenAI-shaped ones, x-api-key and
 * anthropic-version for Anthropic. key may be NULL (a self-hosted server without one);
 * api_version NULL means the default. Returns a malloc'd string, NULL if out of memory. */
char *provider_auth_headers(enum provider_kind kind, const char *key, const char *api_version);

/* The anthropic-version the gateway sends when the config names none. */
#define PROVIDER_ANTHROPIC_VERSION "2023-06-01"

#endif
