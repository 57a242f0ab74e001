// Command loadgen drives mosquitto-guard's benchmark (bench/run.sh): it
// generates MQTT connection load from many 127.x source addresses, measures
// how fast a ban set in Redis takes effect, fills Redis with block keys,
// writes mosquitto_passwd files, and prints the final table. Every
// subcommand prints one JSON line on stdout; diagnostics go to stderr.
//
//	loadgen connect      connect → CONNACK → DISCONNECT loops; connects/s, latency
//	loadgen propagation  SET guard:block:clientid:<id> → first refused CONNECT
//	loadgen kick         SET guard:block:clientid:<id> → connected client closed
//	loadgen loadkeys     fill Redis with N block keys, M of them ranges
//	loadgen genpasswd    N users in mosquitto_passwd's $7$ format
//	loadgen fleet        N devices held connected: the broker's RSS (hold), or a
//	                     reconnect storm after the broker's restart (storm)
//	loadgen waitlog      wait for a line in a log file
//	loadgen procmem      VmRSS and VmHWM of a process
//	loadgen freeport     a free TCP port on 127.0.0.1
//	loadgen report       the markdown table from the JSON lines of a run
//	loadgen chaos        faults under CONNECT load (make chaos); chaosreport its table
//	loadgen soak         many distinct client IDs against the memory bounds (make soak); soakreport its table
package main
