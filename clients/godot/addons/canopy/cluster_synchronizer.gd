class_name ClusterSynchronizer
extends MultiplayerSynchronizer
## Keeps the properties of its root node (see [member MultiplayerSynchronizer.root_path]) in a Canopy cluster node.
##
## Reuses the [SceneReplicationConfig] edited in the Replication panel: each property's replication mode
## ([code]property_get_replication_mode[/code]: always / on change / never) and spawn flag
## ([code]property_get_spawn[/code]). The session that owns the cluster node writes; everybody else applies the values
## that arrive through a subscription ([ClusterSpawner] or [method CanopyClient.subscribe_subtree]), in commit order.
## [br][br]
## Writing (owner only): [code]always[/code] properties are checked every
## [member MultiplayerSynchronizer.replication_interval], [code]on change[/code] ones every
## [member MultiplayerSynchronizer.delta_interval] (0 = every frame), on a grid of the interval shared by every
## synchronizer (so synchronizers with the same interval are due in the same frame); both write only values that
## changed since the last write, because the cluster keeps the last value durably (nothing to re-send, unlike
## unreliable UDP). The changes are handed to [method CanopyClient.queue_property_write]: at the end of the frame the
## changes of ALL the owned nodes of this instance go out as one [code]tree_set_many[/code] (one transaction), with
## [member cluster_region] as placement hint; one batch is in flight at a time and changes made meanwhile are
## coalesced into the next, so every node's values commit in the order they were made.
## Property names in the cluster are the config's paths as Strings ([code]".:position"[/code], [code]"Sprite:modulate"[/code]).
## [br][br]
## The built-in SceneMultiplayer also replicates a MultiplayerSynchronizer when the game runs Godot's own multiplayer
## with a real peer. Unless [member keep_builtin_replication] is set, [member MultiplayerSynchronizer.public_visibility]
## is turned off in [method Node._ready] so the two never write the same node.

## This instance's session now owns the node (it writes it).
signal ownership_gained()
## Another session owns the node now, or ownership was released or handed off.
signal ownership_lost()
## Remote values were applied (once per subscription batch that changed this node).
signal cluster_synchronized()

## Keep Godot's own replication of this synchronizer (public visibility as configured). Off by default.
@export var keep_builtin_replication: bool = false
## Smooth remote [code]position[/code] / [code]rotation[/code] values (float, Vector2, Vector3) between batches.
@export var interpolate: bool = false
## The cluster node (UUID or path) for a node that no [ClusterSpawner] spawned; a spawner sets it for its nodes.
## A path is resolved to the node's UUID when the synchronizer enters the tree.
@export var cluster_node: String = ""
## The region the cluster node is placed in ("" = by hash or unknown): a placement hint for the batched writes. A
## spawner sets it from its [member ClusterSpawner.region] or the node's record.
@export var cluster_region: String = ""

var _client: CanopyClient = null
var _owned: bool = false
var _owner: String = ""
var _last_sent: Dictionary = {}
var _next_always_ms: int = 0
var _next_delta_ms: int = 0
var _last_remote_ts: String = ""
var _owner_ts: String = ""
var _last_remote_ms: int = 0
var _remote_gap_ms: int = 100
var _interp: Dictionary = {}
var _registered_id: String = ""


func _ready() -> void:
	if not keep_builtin_replication:
		public_visibility = false
	if _client == null:
		_client = get_node_or_null("/root/Canopy") as CanopyClient
	_register()


func _exit_tree() -> void:
	if _client != null and not _registered_id.is_empty():
		_client.unregister_synchronizer(_registered_id, self)
		_registered_id = ""


func _process(_delta: float) -> void:
	if not _interp.is_empty():
		_step_interpolation()
	if not _owned or not _is_uuid(_registered_id) or _client == null or not _client.is_ready():
		return
	var now := Time.get_ticks_msec()
	var always_due := now >= _next_always_ms
	var delta_due := now >= _next_delta_ms
	if not always_due and not delta_due:
		return
	var changed := {}
	for path: NodePath in _config_properties():
		var mode := replication_config.property_get_replication_mode(path)
		if mode == SceneReplicationConfig.REPLICATION_MODE_NEVER:
			continue
		if mode == SceneReplicationConfig.REPLICATION_MODE_ALWAYS and not always_due:
			continue
		if mode == SceneReplicationConfig.REPLICATION_MODE_ON_CHANGE and not delta_due:
			continue
		var key := String(path)
		var value: Variant = read_property(path)
		if not _last_sent.has(key) or not _same(_last_sent[key], value):
			changed[key] = value
	if always_due:
		_next_always_ms = _next_tick(now, replication_interval)
	if delta_due:
		_next_delta_ms = _next_tick(now, delta_interval)
	if not changed.is_empty():
		for k: String in changed:
			_last_sent[k] = changed[k]
		_client.queue_property_write(cluster_node, changed, cluster_region, self)


## Whether this instance's session owns the cluster node.
func is_owner() -> bool:
	return _owned


## The session id that owns the node as last seen ("" = nobody or unknown).
func get_owner_session() -> String:
	return _owner


## The cluster node's UUID (or the path given in [member cluster_node]).
func get_cluster_id() -> String:
	return cluster_node


## Takes ownership for this instance's session (a coroutine); true on success. Refused while another session's
## lease is live ([code]not_owner[/code]).
func take_ownership() -> bool:
	if _client == null or cluster_node.is_empty():
		return false
	var r := await _client.take_ownership([cluster_node])
	if r.get("ok", false):
		_set_owner(_client.session_id, str(r.get("ts", "")))
	return bool(r.get("ok", false))


## Writes the current values, then gives up ownership (a coroutine); true on success.
func release_ownership() -> bool:
	if _client == null or cluster_node.is_empty() or not _owned:
		return false
	await _settle_writes()
	var final := collect_properties(false)
	if not final.is_empty():
		var w := await _client.set_props(cluster_node, final)
		if not w.get("ok", false):
			_on_write_refused(w)
			return false
	var r := await _client.release_ownership([cluster_node])
	if r.get("ok", false):
		_set_owner("", str(r.get("ts", "")))
	return bool(r.get("ok", false))


## Hands the node to [param session_id] with the current values, in one transaction (a coroutine); true on success.
func handoff_to(session_id: String) -> bool:
	if _client == null or cluster_node.is_empty() or not _owned:
		return false
	await _settle_writes()
	var r := await _client.handoff(cluster_node, session_id, collect_properties(false))
	if r.get("ok", false):
		_set_owner(session_id, str(r.get("ts", "")))
	elif str(r.get("code", "")) == "not_owner":
		_set_owner(str(r.get("owner", "")))
	return bool(r.get("ok", false))


## Reads the node's owner from the cluster (a coroutine) and updates [method is_owner] (emitting the signals).
func refresh_ownership() -> bool:
	if _client == null or cluster_node.is_empty():
		return false
	var r := await _client.read_tree(cluster_node, 0)
	if r.get("ok", false) and not (r["nodes"] as Array).is_empty():
		var owner_id: Variant = r["nodes"][0].get("owner")
		_set_owner("" if owner_id == null else str(owner_id), str(r.get("ts", "")))
	return _owned


## The replicated properties' current values ([param spawn_only]: only those with the spawn flag), keyed by path.
func collect_properties(spawn_only: bool) -> Dictionary:
	var out := {}
	for path: NodePath in _config_properties():
		var spawn := replication_config.property_get_spawn(path)
		var mode := replication_config.property_get_replication_mode(path)
		if (spawn_only and not spawn) or (not spawn_only and mode == SceneReplicationConfig.REPLICATION_MODE_NEVER and not spawn):
			continue
		out[String(path)] = read_property(path)
	return out


## Applies cluster values (path String -> value) to the root's properties; unknown names are ignored.
func apply_properties(props: Dictionary, smooth: bool = false) -> void:
	for path: NodePath in _config_properties():
		var key := String(path)
		if not props.has(key) or props[key] == null:
			continue
		var value: Variant = props[key]
		if smooth and interpolate and _interpolable(path, value):
			_interp[key] = {"path": path, "from": read_property(path), "to": value, "start": Time.get_ticks_msec(), "dur": _remote_gap_ms}
		else:
			_interp.erase(key)
			write_property(path, value)
		_last_sent[key] = value


## The value of a config property (relative to [member MultiplayerSynchronizer.root_path]).
func read_property(path: NodePath) -> Variant:
	var target := _target(path)
	return null if target == null else target.get_indexed(NodePath(path.get_concatenated_subnames()))


func write_property(path: NodePath, value: Variant) -> void:
	var target := _target(path)
	if target != null:
		target.set_indexed(NodePath(path.get_concatenated_subnames()), value)


# Called by the spawner (before the node enters the tree for remote spawns).
func _bind(client: CanopyClient, uuid: String, owner_id: String, region: String = "") -> void:
	_client = client
	cluster_node = uuid
	cluster_region = region
	_owner = owner_id
	_owned = client != null and owner_id == client.session_id and not owner_id.is_empty()
	_last_sent = collect_properties(false) if _owned else {}
	if is_inside_tree():
		_register()


# Called by CanopyClient for every subscription event about this node.
func _on_remote_event(ev: Dictionary) -> void:
	var ts := str(ev.get("ts", ""))
	if not ts.is_empty() and CanopyClient.compare_ts(ts, _last_remote_ts) <= 0:
		return  # the same event through a second subscription
	_last_remote_ts = ts
	if ev.has("region"):
		cluster_region = "" if ev.get("region") == null else str(ev["region"])
	if ev.has("owner") and CanopyClient.compare_ts(ts, _owner_ts) > 0:
		# Only owner changes newer than what this instance already knows (its own take, handoff or release, whose
		# events may still be on their way): a stale event must not flip ownership back and forth.
		var owner_id: Variant = ev.get("owner")
		_set_owner("" if owner_id == null else str(owner_id), ts)
	var props: Dictionary = ev.get("props", {})
	if props.is_empty() or _owned:
		return
	var now := Time.get_ticks_msec()
	if _last_remote_ms > 0:
		_remote_gap_ms = clampi(now - _last_remote_ms, 16, 250)
	_last_remote_ms = now
	apply_properties(props, true)
	cluster_synchronized.emit()


## Records the owner as known at timestamp [param ts] ("" = unknown). Called by the spawner and the client.
func _set_owner(owner_id: String, ts: String = "") -> void:
	if not ts.is_empty() and CanopyClient.compare_ts(ts, _owner_ts) > 0:
		_owner_ts = ts
	_owner = owner_id
	var mine := _client != null and not owner_id.is_empty() and owner_id == _client.session_id
	if mine == _owned:
		return
	_owned = mine
	if mine:
		_interp.clear()
		_last_sent = {}
		ownership_gained.emit()
	else:
		ownership_lost.emit()


func _register() -> void:
	if _client == null or cluster_node.is_empty() or _registered_id == cluster_node:
		return
	if not _is_uuid(cluster_node):
		_resolve_path()
		return
	if not _registered_id.is_empty():
		_client.unregister_synchronizer(_registered_id, self)
	_registered_id = cluster_node
	_client.register_synchronizer(cluster_node, self)


# A path in cluster_node: batched writes and subscription events name nodes by UUID, so look it up once.
func _resolve_path() -> void:
	var path := cluster_node
	while _client != null and is_inside_tree() and cluster_node == path:
		if _client.is_ready():
			var r := await _client.read_tree(path, 0)
			if cluster_node != path or not is_inside_tree():
				return
			if r.get("ok", false) and not (r["nodes"] as Array).is_empty():
				var rec: Dictionary = r["nodes"][0]
				cluster_node = str(rec["id"])
				if cluster_region.is_empty() and rec.get("region") != null:
					cluster_region = str(rec["region"])
				_register()
				return
			if str(r.get("code", "")) == "not_found":
				push_warning("ClusterSynchronizer %s: cluster node %s does not exist" % [get_path(), path])
				return
		await get_tree().create_timer(0.2).timeout


# Called by the client when a batched write was refused because of this node (not_owner, not_found).
func _on_write_refused(answer: Dictionary) -> void:
	_last_sent = {}
	if str(answer.get("code", "")) == "not_owner" and answer.get("owner") != null:
		_set_owner(str(answer["owner"]))
	else:
		await refresh_ownership()


# Before a handoff or release: nothing of ours may be written after the final values.
func _settle_writes() -> void:
	_client.take_queued_writes(cluster_node)
	await _client.wait_write_idle()
	_client.take_queued_writes(cluster_node)


static func _is_uuid(text: String) -> bool:
	if text.length() != 36:
		return false
	for i in 36:
		var c := text.unicode_at(i)
		if i == 8 or i == 13 or i == 18 or i == 23:
			if c != 45:  # "-"
				return false
		elif not ((c >= 48 and c <= 57) or (c >= 97 and c <= 102) or (c >= 65 and c <= 70)):
			return false
	return true


static func _next_tick(now_ms: int, interval_s: float) -> int:
	var iv := int(interval_s * 1000.0)
	return now_ms if iv <= 0 else (now_ms / iv + 1) * iv


func _config_properties() -> Array[NodePath]:
	if replication_config == null:
		return []
	return replication_config.get_properties()


func _target(path: NodePath) -> Node:
	var root := get_node_or_null(root_path)
	if root == null:
		return null
	var names := path.get_concatenated_names()
	return root if names.is_empty() or names == "." else root.get_node_or_null(NodePath(names))


static func _same(a: Variant, b: Variant) -> bool:
	return typeof(a) == typeof(b) and a == b


func _interpolable(path: NodePath, value: Variant) -> bool:
	var prop := path.get_concatenated_subnames()
	if prop != "position" and prop != "rotation" and prop != "global_position":
		return false
	return value is float or value is Vector2 or value is Vector3


func _step_interpolation() -> void:
	var now := Time.get_ticks_msec()
	var done: Array = []
	for key: String in _interp:
		var it: Dictionary = _interp[key]
		var t := clampf(float(now - int(it["start"])) / maxf(float(it["dur"]), 1.0), 0.0, 1.0)
		var from: Variant = it["from"]
		var to: Variant = it["to"]
		var value: Variant = to
		if typeof(from) == typeof(to):
			if to is float:
				value = lerp_angle(from, to, t) if String(it["path"]).ends_with("rotation") else lerpf(from, to, t)
			elif to is Vector2 or to is Vector3:
				value = from.lerp(to, t)
		write_property(it["path"], value)
		if t >= 1.0:
			done.append(key)
	for key: String in done:
		_interp.erase(key)
