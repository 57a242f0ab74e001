package store

import (
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/mosquitto-guard/mosquitto-guard/keys"
)

func TestResolve(t *testing.T) {
	m := func(kind keys.Kind, s keys.Scope) *Match {
		return &Match{Kind: kind, Scope: s, Key: string(kind) + ":" + string(s)}
	}
	allowID, allowUser := m(keys.Allow, keys.ClientID), m(keys.Allow, keys.Username)
	allowIP, allowCIDR := m(keys.Allow, keys.IP), m(keys.Allow, keys.CIDR)
	blockID, blockUser := m(keys.Block, keys.ClientID), m(keys.Block, keys.Username)
	blockIP, blockCIDR := m(keys.Block, keys.IP), m(keys.Block, keys.CIDR)
	allowCert, blockCert := m(keys.Allow, keys.Cert), m(keys.Block, keys.Cert)
	cases := []struct {
		name          string
		allows        []*Match
		blocks        []*Match
		allow, refuse *Match
	}{
		{"nothing", nil, nil, nil, nil},
		{"block alone", nil, []*Match{blockID, nil, blockIP}, nil, blockID},
		{"claim allow lifts claims only", []*Match{allowID}, []*Match{blockID, blockUser, blockIP}, allowID, blockIP},
		{"claim allow never lifts a range", []*Match{nil, allowUser}, []*Match{nil, blockUser, nil, blockCIDR}, allowUser, blockCIDR},
		{"claim allow, claim bans only", []*Match{allowID}, []*Match{blockID, blockUser}, allowID, nil},
		{"ip allow lifts everything", []*Match{nil, nil, allowIP}, []*Match{blockID, blockUser, blockIP, blockCIDR}, allowIP, nil},
		{"range allow lifts everything", []*Match{nil, nil, nil, allowCIDR}, []*Match{blockID, nil, blockIP}, allowCIDR, nil},
		{"proof preferred to claim", []*Match{allowID, nil, allowIP}, []*Match{nil, nil, blockIP}, allowIP, nil},
		{"cert allow lifts everything", []*Match{nil, nil, allowCert}, []*Match{blockID, blockUser, blockCert, blockIP, blockCIDR}, allowCert, nil},
		{"claim allow never lifts a cert ban", []*Match{allowID, allowUser}, []*Match{blockID, blockUser, blockCert}, allowID, blockCert},
		{"cert allow preferred to claim", []*Match{allowID, nil, allowCert}, []*Match{blockID, nil, nil, blockIP}, allowCert, nil},
	}
	for _, c := range cases {
		a, b := Resolve(c.allows, c.blocks)
		assert.Equal(t, c.allow, a, c.name)
		assert.Equal(t, c.refuse, b, c.name)
	}
}
