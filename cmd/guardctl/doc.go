// Command guardctl is the operator's tool for mosquitto-guard, the Mosquitto
// security plugin: it reads and edits what the plugin keeps in Redis.
//
// ban, unban, allow and unallow write or delete one allow or block key,
// checked and in the form the plugin matches, and publish its name on the
// change channel so every broker's replica has it at once; list shows the
// bans or the allowlist:
//
//	guardctl ban ip 203.0.113.7 --for 1h --reason scanner
//	guardctl list --scope ip
//
// audit lists the client-ID conflict findings the plugin reported (the
// analogue of AWS IoT Device Defender's CONFLICTING_CLIENT_IDS_CHECK), for an
// on-demand look or a cron job:
//
//	guardctl audit --config /etc/mosquitto/mosquitto.conf
//	guardctl audit --since-last --json --config /etc/mosquitto/mosquitto.conf
//
// explain says why a client would be refused or accepted, from what Redis
// holds and without writing to it: the entries it matches and which one
// decides (store.Resolve, as at CONNECT), its failure counts, its username's
// throttle and its client ID's conflict state:
//
//	guardctl explain --clientid sensor-17 --username alice --ip 203.0.113.7
//
// Exit status: 0 ok, 1 runtime error (such as Redis unreachable), 2 usage error.
package main
