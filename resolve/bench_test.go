package resolve

import (
	"testing"

	"github.com/replicatorhq/replicator/pkg/dvv"
)

func BenchmarkRulesFor(b *testing.B) {
	rules, err := NewRules(Siblings(), []Rule{
		{Prefix: "cart/", Resolver: Union()},
		{Prefix: "user/", Resolver: LWW()},
		{Prefix: "user/admin/", Resolver: Priority([]string{"dc1"})},
		{Prefix: "session/", Resolver: LWW()},
		{Prefix: "doc/", Resolver: Record()},
		{Prefix: "log/", Resolver: Concat("")},
	})
	if err != nil {
		b.Fatal(err)
	}
	keys := []string{"user/admin/root", "cart/42", "other/key", "doc/7"}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		_ = rules.For(keys[i%len(keys)])
	}
}

func BenchmarkLWWResolve3(b *testing.B) {
	in := []dvv.Sibling{live("dc1", 7, 100, "B"), live("dc2", 3, 200, "C"), tomb("dc3", 9, 150)}
	r := LWW()
	b.ReportAllocs()
	for b.Loop() {
		_ = r.Resolve("k", in)
	}
}

func BenchmarkPriorityResolve3(b *testing.B) {
	in := []dvv.Sibling{live("dc1", 7, 100, "B"), live("dc2", 3, 200, "C"), tomb("dc3", 9, 150)}
	r := Priority([]string{"dc2", "dc1", "dc3"})
	b.ReportAllocs()
	for b.Loop() {
		_ = r.Resolve("k", in)
	}
}

func BenchmarkUnionResolve3(b *testing.B) {
	in := []dvv.Sibling{live("dc1", 7, 100, `["a","b"]`), live("dc2", 3, 200, `["b","c"]`), live("dc3", 9, 150, `["d"]`)}
	r := Union()
	b.ReportAllocs()
	for b.Loop() {
		_ = r.Resolve("k", in)
	}
}
