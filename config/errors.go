package config

import "strings"

// Errors is every problem found at once, in a stable order, each one line:
// the broker logs one line per element before it stops, so that a config is
// fixed in one go rather than one restart per problem.
type Errors []error

// Error joins the lines with "; ".
func (e Errors) Error() string {
	lines := make([]string, len(e))
	for i, err := range e {
		lines[i] = err.Error()
	}
	return strings.Join(lines, "; ")
}

// Unwrap lets errors.Is and errors.As see every element.
func (e Errors) Unwrap() []error { return e }
