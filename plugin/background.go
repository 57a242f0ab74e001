package plugin

import "fmt"

// spawn runs fn in a goroutine that Close waits for. A panic in it is logged
// and swallowed: a panic escaping any goroutine would kill the broker.
func (g *Guard) spawn(name string, fn func()) {
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		defer func() {
			if r := recover(); r != nil {
				g.log(LevelError, fmt.Sprintf("mosquitto-guard: internal error in %s: %v", name, r))
			}
		}()
		fn()
	}()
}
