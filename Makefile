# coral: build, test, install.  `make` builds build/coral; `make test` is what CI runs.
# Every variable below can be overridden on the command line (make CC=clang BUILD=build-asan ...).

VERSION   := 0.1.0
PREFIX    ?= /usr/local
BUILD     ?= build
CC        ?= cc
LUA       ?= lua5.4
PKG       ?= pkg-config
SANITIZE  ?=
WERROR    ?=

# Lua's own warning list (from its makefile) plus -Wall -Wextra.
WARN := -Wall -Wextra -Wshadow -Wsign-compare -Wundef -Wwrite-strings -Wredundant-decls \
        -Wdisabled-optimization -Wdouble-promotion -Wmissing-declarations \
        -Wdeclaration-after-statement -Wmissing-prototypes -Wnested-externs \
        -Wstrict-prototypes -Wold-style-definition
ifneq ($(WERROR),)
WARN += -Werror
endif

OPT      ?= -O2 -g
CFLAGS   ?=
CPPFLAGS += -D_GNU_SOURCE -DCORAL_VERSION='"$(VERSION)"' -Isrc -I$(BUILD) \
            -isystem /usr/include/lua5.4
ALL_CFLAGS = -std=c11 $(OPT) $(WARN) -MMD -MP -fno-omit-frame-pointer $(CFLAGS)
ifneq ($(SANITIZE),)
ALL_CFLAGS += -fsanitize=$(SANITIZE) -fno-sanitize-recover=all
LDFLAGS    += -fsanitize=$(SANITIZE)
endif

# Lua, luv, lua-cjson and libuv are linked statically, so build/coral is one file that runs
# when copied anywhere on a Debian machine; -Wl,-E exports the Lua API to C modules loaded
# at run time (busted's term and system modules).
LIBDIR    ?= /usr/lib/$(shell $(CC) -print-multiarch)
STATIC := $(LIBDIR)/liblua5.4-luv.a $(LIBDIR)/liblua5.4-cjson.a $(LIBDIR)/liblua5.4.a $(LIBDIR)/libuv_a.a
LDLIBS += -Wl,-E $(STATIC) -ledit -lpthread -ldl -lm

# build/coral allocates through jemalloc (static, position-independent): on a 30,000-task plan
# its peak RSS was 167 MB against glibc malloc's 210, and its CPU 7 % lower. A run's Lua heap
# is many small tables that die young among a few that live for the run, which leaves glibc's
# heap full of free holes; jemalloc's size classes keep like sizes together and give freed pages
# back (src/main.c sets its options). Not with a sanitizer, which brings its own allocator, nor
# in the C tests.
ifeq ($(SANITIZE),)
ALLOC  := $(LIBDIR)/libjemalloc_pic.a
endif

SRC      := src/main.c src/core.c src/util.c src/repl.c src/spawn.c src/dag.c src/coord.c src/jsonw.c src/yamlw.c
SRC      := $(wildcard $(SRC))
OBJ      := $(SRC:src/%.c=$(BUILD)/%.o) $(BUILD)/embedded.o
LUA_SRC  := $(shell find lua recipes -name '*.lua' 2>/dev/null | LC_ALL=C sort) \
            $(shell find agents -name '*.md' 2>/dev/null | LC_ALL=C sort)
DEPS_OK  := $(BUILD)/.deps-ok

.PHONY: all deps test test-c test-lua lint demo install clean bench
all: $(BUILD)/coral

# Install missing Debian packages once per build dir; the stamp is redone when the script changes.
$(DEPS_OK): scripts/install-deps
	@mkdir -p $(BUILD)
	@scripts/install-deps --check >/dev/null 2>&1 || scripts/install-deps
	@touch $@
deps:
	scripts/install-deps

$(BUILD)/coral: $(OBJ)
	$(CC) $(OPT) -o $@ $(OBJ) $(LDFLAGS) $(ALLOC) $(LDLIBS)

$(BUILD)/%.o: src/%.c | $(DEPS_OK)
	$(CC) $(CPPFLAGS) $(ALL_CFLAGS) -c -o $@ $<

# The Lua modules, recipes and agent roles are compiled into the binary (see scripts/embed.lua).
$(BUILD)/embedded.c: scripts/embed.lua $(LUA_SRC) | $(DEPS_OK)
	$(LUA) scripts/embed.lua $@ $(LUA_SRC)
$(BUILD)/embedded.o: $(BUILD)/embedded.c
	$(CC) $(CPPFLAGS) $(ALL_CFLAGS) -Wno-overlength-strings -c -o $@ $<

# C tests run under ASan and UBSan from their own build dir.
CTEST_BUILD := $(BUILD)/asan
CTESTS := $(patsubst spec/c/%.c,$(CTEST_BUILD)/%,$(wildcard spec/c/test_*.c))
$(CTEST_BUILD)/test_%: spec/c/test_%.c spec/c/ctest.h $(filter-out src/main.c,$(SRC)) $(BUILD)/embedded.c | $(DEPS_OK)
	@mkdir -p $(CTEST_BUILD)
	$(CC) $(CPPFLAGS) -Ispec/c -std=c11 -O1 -g $(WARN) -fsanitize=address,undefined -fno-sanitize-recover=all \
	  -fno-omit-frame-pointer -o $@ $< $(filter-out src/main.c,$(SRC)) $(BUILD)/embedded.c \
	  -fsanitize=address,undefined $(LDLIBS)

test:
	@scripts/install-deps --check --test >/dev/null 2>&1 || scripts/install-deps --test
	@$(MAKE) --no-print-directory WERROR=1 all $(CTESTS)
	@scripts/run-tests $(BUILD)

# luacheck over every Lua file of the tree (.luacheckrc); make test runs it too.
lint:
	@scripts/install-deps --check lua-check >/dev/null 2>&1 || scripts/install-deps lua-check
	@luacheck -q .

demo: $(BUILD)/coral
	@scripts/demo $(BUILD)/coral

bench: $(BUILD)/coral
	@scripts/bench $(BUILD)/coral

install: $(BUILD)/coral
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/share/man/man1
	install -m 0755 $(BUILD)/coral $(DESTDIR)$(PREFIX)/bin/coral
	install -m 0644 docs/coral.1 $(DESTDIR)$(PREFIX)/share/man/man1/coral.1

clean:
	rm -rf $(BUILD)

-include $(OBJ:.o=.d)
