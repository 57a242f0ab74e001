/*
 * noop_plugin.c: a Mosquitto 2.0 plugin (API v5) that accepts every
 * username and password and does nothing else. Not part of the product:
 * make bench's paired slices run it (pair "noop") to measure what Mosquitto
 * itself spends calling an authentication plugin, the floor any plugin pays
 * on a CONNECT. It registers what mosquitto-guard registers on a cache hit's
 * path: BASIC_AUTH and DISCONNECT (and TICK), each returning at once.
 */
#include <stddef.h>
#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>

static mosquitto_plugin_id_t *plugin_id;

static int on_basic_auth(int event, void *event_data, void *userdata)
{
	(void)event; (void)event_data; (void)userdata;
	return MOSQ_ERR_SUCCESS;
}

static int on_other(int event, void *event_data, void *userdata)
{
	(void)event; (void)event_data; (void)userdata;
	return MOSQ_ERR_SUCCESS;
}

int mosquitto_plugin_version(int supported_version_count, const int *supported_versions)
{
	(void)supported_version_count; (void)supported_versions;
	return 5;
}

int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **userdata, struct mosquitto_opt *opts, int opt_count)
{
	(void)userdata; (void)opts; (void)opt_count;
	plugin_id = identifier;
	int rc = mosquitto_callback_register(plugin_id, MOSQ_EVT_BASIC_AUTH, on_basic_auth, NULL, NULL);
	if (rc == MOSQ_ERR_SUCCESS)
		rc = mosquitto_callback_register(plugin_id, MOSQ_EVT_DISCONNECT, on_other, NULL, NULL);
	if (rc == MOSQ_ERR_SUCCESS)
		rc = mosquitto_callback_register(plugin_id, MOSQ_EVT_TICK, on_other, NULL, NULL);
	return rc;
}

int mosquitto_plugin_cleanup(void *userdata, struct mosquitto_opt *opts, int opt_count)
{
	(void)userdata; (void)opts; (void)opt_count;
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_BASIC_AUTH, on_basic_auth, NULL);
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_DISCONNECT, on_other, NULL);
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_TICK, on_other, NULL);
	return MOSQ_ERR_SUCCESS;
}
