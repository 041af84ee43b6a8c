# Helpers shared by the bench scripts (sourced, not run).

json_field() { # file field -> first numeric/string value of "field" in a `smsgw bench --json` file
    sed -n "s/^  \"$2\": \"\{0,1\}\([^\",]*\)\"\{0,1\},\{0,1\}$/\1/p" "$1" | head -n1
}
latency_field() { # file field (inside "latency")
    sed -n "s/^    \"$2\": \([^,]*\),\{0,1\}$/\1/p" "$1" | head -n1
}
