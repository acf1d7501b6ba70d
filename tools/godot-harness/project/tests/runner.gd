extends Node
## Autoload of the harness project: runs the test named by the user argument --test=<name>
## (res://tests/<name>.gd, a CanopyTest), prints its summary and quits with 0 (passed), 1 (failed) or 2 (its own
## deadline, --deadline_ms, passed first).

var _test: CanopyTest


func _ready() -> void:
	var args := CanopyTest.parse_args(OS.get_cmdline_user_args())
	var test_name := str(args.get("test", ""))
	var path := "res://tests/%s.gd" % test_name
	if test_name.is_empty() or not ResourceLoader.exists(path):
		printerr("runner: no test %s (args %s)" % [path, str(OS.get_cmdline_user_args())])
		get_tree().quit(3)
		return
	var script: GDScript = load(path)
	if script == null or not script.can_instantiate():
		printerr("runner: %s does not compile" % path)
		get_tree().quit(3)
		return
	_test = script.new()
	_test.args = args
	_test.name = "Test"
	add_child(_test)
	_run.call_deferred(int(args.get("deadline_ms", "50000")))


func _run(deadline_ms: int) -> void:
	get_tree().create_timer(deadline_ms / 1000.0, true, false, true).timeout.connect(_on_deadline.bind(deadline_ms))
	print("runner: %s (role %s) starting" % [str(_test.args.get("test")), str(_test.args.get("role", "-"))])
	await _test.run()
	_test.finished = true
	var code := 0 if _test.failures == 0 else 1
	print("runner: done, %d checks passed, %d failed" % [_test.passes, _test.failures])
	Canopy.disconnect_from_cluster()
	get_tree().quit(code)


func _on_deadline(deadline_ms: int) -> void:
	if _test != null and not _test.finished:
		_test.check(false, "the test did not finish within its deadline (%d ms); last step: %s" % [deadline_ms, _test.step])
		get_tree().quit(2)
