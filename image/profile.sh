# The relay's CLI reads the appliance's config by default.
export PATCHPILOT_CONFIG=/etc/patchpilot-relay/relay.toml
