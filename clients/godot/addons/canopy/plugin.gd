@tool
extends EditorPlugin
## Registers the [code]Canopy[/code] autoload ([CanopyClient]) while the plugin is enabled.

const AUTOLOAD_NAME := "Canopy"
const AUTOLOAD_PATH := "res://addons/canopy/canopy.gd"


func _enable_plugin() -> void:
	add_autoload_singleton(AUTOLOAD_NAME, AUTOLOAD_PATH)


func _disable_plugin() -> void:
	remove_autoload_singleton(AUTOLOAD_NAME)
