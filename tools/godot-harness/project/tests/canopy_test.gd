class_name CanopyTest
extends Node
## Base of the harness's GDScript tests: checks reported to the harness (CANOPY_ASSERT lines), marks
## (CANOPY_MARK lines), bounded waits and messages from the test host.

## User arguments --key=value as a Dictionary (values are Strings).
var args: Dictionary = {}
var passes: int = 0
var failures: int = 0
var finished: bool = false
## What the test is doing now (reported when it misses its deadline).
var step: String = "start"


## Override: the test. Awaited by the runner.
func run() -> void:
	pass


static func parse_args(user_args: PackedStringArray) -> Dictionary:
	var out := {}
	for a in user_args:
		var s := a.trim_prefix("--")
		var eq := s.find("=")
		if eq < 0:
			out[s] = "true"
		else:
			out[s.substr(0, eq)] = s.substr(eq + 1)
	return out


func arg(key: String, default: String = "") -> String:
	return str(args.get(key, default))


func urls() -> PackedStringArray:
	return arg("urls").split(",", false)


func check(cond: bool, message: String) -> bool:
	if cond:
		passes += 1
		print("CANOPY_ASSERT PASS %s" % message)
	else:
		failures += 1
		print("CANOPY_ASSERT FAIL %s" % message)
	return cond


func check_eq(actual: Variant, expected: Variant, message: String) -> bool:
	var ok: bool = typeof(actual) == typeof(expected) and actual == expected
	return check(ok, "%s (expected %s, got %s)" % [message, var_to_str(expected).replace("\n", " "), var_to_str(actual).replace("\n", " ")])


func check_ok(answer: Dictionary, message: String) -> bool:
	return check(answer.get("ok", false), "%s%s" % [message, "" if answer.get("ok", false) else " (error %s: %s)" % [answer.get("code"), answer.get("message")]])


func mark(mark_name: String, data: Variant = null) -> void:
	print("CANOPY_MARK %s %s" % [mark_name, JSON.stringify(data)])


func now_ms() -> int:
	return Time.get_ticks_msec()


## Waits (frame by frame) until [param predicate] returns true; false after [param timeout_ms].
func wait_until(predicate: Callable, timeout_ms: int, what: String) -> bool:
	step = "waiting for " + what
	var deadline := now_ms() + timeout_ms
	while not predicate.call():
		if now_ms() >= deadline:
			return check(false, "timed out after %d ms waiting for %s" % [timeout_ms, what])
		await get_tree().process_frame
	return true


## Calls the coroutine [param probe] every [param interval_ms] until it returns true; false after [param timeout_ms].
func poll_until(probe: Callable, timeout_ms: int, what: String, interval_ms: int = 50) -> bool:
	step = "polling for " + what
	var deadline := now_ms() + timeout_ms
	while true:
		var ok: bool = await probe.call()
		if ok:
			return true
		if now_ms() >= deadline:
			return check(false, "timed out after %d ms polling for %s" % [timeout_ms, what])
		var next := now_ms() + interval_ms
		while now_ms() < next:
			await get_tree().process_frame
	return false


## Waits for a message from the test host (the harness's stdin "send" command) equal to [param text].
func wait_message(text: String, timeout_ms: int) -> bool:
	step = "waiting for the message " + text
	var deadline := now_ms() + timeout_ms
	while now_ms() < deadline:
		var m: Variant = JavaScriptBridge.eval("window.canopyInbox.length ? window.canopyInbox.shift() : null", true)
		if m != null and str(m) == text:
			return true
		await get_tree().process_frame
	return check(false, "timed out after %d ms waiting for the message %s" % [timeout_ms, text])


## Connects the Canopy autoload to --urls with --tree; true once connected and the session is open.
func connect_canopy(timeout_ms: int = 15000) -> bool:
	step = "connecting"
	var options := {"tree": arg("tree", "harness"), "session_lease_ms": int(arg("lease_ms", "10000"))}  # long enough for a loaded CI machine (renewed every third)
	if check(Canopy.connect_to_cluster(urls(), options) == OK, "connect_to_cluster accepts the URLs"):
		return await wait_until(Canopy.is_ready, timeout_ms, "the connection and session to %s" % arg("urls"))
	return false
