package main

import (
	"go/ast"
	"go/parser"
	"go/token"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Issue 12: the Go compiler runs a function's defers inline (open-coded)
// only when it has at most 8 defers, none in a loop, and at most 15
// return statements times defers; otherwise each defer goes through the
// runtime's defer records, about 300 instructions more per CONNECT in
// guardBasicAuth (it had 5 returns and 4 defers). The same rule checked on
// its source (`go build -gcflags=-d=defer ./cgo` prints the compiler's
// verdict).
func TestBasicAuthDefersOpenCoded(t *testing.T) {
	f, err := parser.ParseFile(token.NewFileSet(), "main.go", nil, 0)
	require.NoError(t, err)
	var fn *ast.FuncDecl
	for _, d := range f.Decls {
		if fd, ok := d.(*ast.FuncDecl); ok && fd.Name.Name == "guardBasicAuth" {
			fn = fd
		}
	}
	require.NotNil(t, fn)
	returns, defers, inLoop := 0, 0, 0
	var walk func(n ast.Node, loop bool)
	walk = func(n ast.Node, loop bool) {
		ast.Inspect(n, func(c ast.Node) bool {
			switch c := c.(type) {
			case *ast.FuncLit:
				return false // its returns and defers are its own
			case *ast.ForStmt:
				walk(c.Body, true)
				return false
			case *ast.RangeStmt:
				walk(c.Body, true)
				return false
			case *ast.ReturnStmt:
				returns++
			case *ast.DeferStmt:
				defers++
				if loop {
					inLoop++
				}
			}
			return true
		})
	}
	walk(fn.Body, false)
	require.Positive(t, defers)
	assert.LessOrEqual(t, defers, 8)
	assert.Zero(t, inLoop, "defers in a loop")
	assert.LessOrEqual(t, returns*defers, 15, "%d returns times %d defers", returns, defers)
}
