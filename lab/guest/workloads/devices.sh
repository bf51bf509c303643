# Report what the guest sees: PCI devices, virtio devices, block devices, net interfaces.
echo "PCI:"; for d in /sys/bus/pci/devices/*; do [ -e "$d" ] && echo "  ${d##*/} $(cat $d/vendor):$(cat $d/device) class=$(cat $d/class)"; done
echo "VIRTIO:"; for d in /sys/bus/virtio/devices/*; do [ -e "$d" ] && echo "  ${d##*/} device=$(cat $d/device) driver=$(basename "$(readlink $d/driver)" 2>/dev/null)"; done
echo "BLOCK: $(ls /sys/block | tr '\n' ' ')"
echo "NET: $(ls /sys/class/net | tr '\n' ' ')"
echo "TSHYVE-DEVICES-DONE"
