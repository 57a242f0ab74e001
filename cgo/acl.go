package main

// aclInstances counts the plugin_init calls that reached the ACL
// registration. With per_listener_settings true the broker initialises the
// plugin once per listener that loads it, in config order (see
// config.ResolveACLMode), and a failed init stops the broker's start: so
// the n-th call is the n-th listener's instance. Broker thread only.
var aclInstances int

// nextACLInstance returns how many instances came before this one.
func nextACLInstance() int {
	n := aclInstances
	aclInstances++
	return n
}
