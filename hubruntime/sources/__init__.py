"""Camera-side event sources: clients that read a camera's notifications and publish them."""
