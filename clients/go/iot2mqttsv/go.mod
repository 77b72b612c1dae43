module github.com/iot2mqtt/iot2mqtt-sv/clients/go/iot2mqttsv

go 1.19
